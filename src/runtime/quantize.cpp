#include "runtime/quantize.hpp"

#include <unistd.h>

#include <algorithm>
#include <set>
#include <vector>

#include "kernels/kernels.hpp"
#include "model/checkpoint.hpp"
#include "model/gguf.hpp"
#include "model/hf_config.hpp"
#include "model/safetensors.hpp"
#include "model/tensor_names.hpp"
#include "runtime/model_files.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/quant.hpp"

namespace crossmoe {

namespace fs = std::filesystem;

bool parse_quant_scheme(const std::string& name, QuantScheme* out) {
  for (QuantScheme s : {QuantScheme::Q8_0, QuantScheme::Q4_0, QuantScheme::Q5_0, QuantScheme::Q4_1, QuantScheme::Q5_1, QuantScheme::IQ4_NL, QuantScheme::MXFP4, QuantScheme::IQ4_XS,
                        QuantScheme::Q2_K, QuantScheme::Q3_K, QuantScheme::Q4_K, QuantScheme::Q5_K, QuantScheme::Q6_K, QuantScheme::Mixed})
    if (name == quant_scheme_name(s)) {
      *out = s;
      return true;
    }
  return false;
}

std::string quant_scheme_name(QuantScheme scheme) {
  switch (scheme) {
    case QuantScheme::Q8_0: return "q8_0";
    case QuantScheme::Q4_K: return "q4_k";
    case QuantScheme::Q5_K: return "q5_k";
    case QuantScheme::Q6_K: return "q6_k";
    case QuantScheme::Q4_0: return "q4_0";
    case QuantScheme::Q5_0: return "q5_0";
    case QuantScheme::Q4_1: return "q4_1";
    case QuantScheme::Q5_1: return "q5_1";
    case QuantScheme::IQ4_NL: return "iq4_nl";
    case QuantScheme::MXFP4: return "mxfp4";
    case QuantScheme::IQ4_XS: return "iq4_xs";
    case QuantScheme::Q2_K: return "q2_k";
    case QuantScheme::Q3_K: return "q3_k";
    default: return "mixed";
  }
}

DType block_type_for(DType wanted, int64_t cols, DType stored) {
  if (cols % dtype_block(wanted) != 0) wanted = DType::Q8_0;
  if (cols % quant::kQ8_0Block != 0) return stored;
  return wanted;
}

namespace {

DType weight_type(QuantScheme scheme, bool routed_expert) {
  switch (scheme) {
    case QuantScheme::Q8_0: return DType::Q8_0;
    case QuantScheme::Q4_K: return DType::Q4_K;
    case QuantScheme::Q5_K: return DType::Q5_K;
    case QuantScheme::Q6_K: return DType::Q6_K;
    case QuantScheme::Q4_0: return DType::Q4_0;
    case QuantScheme::Q5_0: return DType::Q5_0;
    case QuantScheme::Q4_1: return DType::Q4_1;
    case QuantScheme::Q5_1: return DType::Q5_1;
    case QuantScheme::IQ4_NL: return DType::IQ4_NL;
    case QuantScheme::MXFP4: return DType::MXFP4;
    case QuantScheme::IQ4_XS: return DType::IQ4_XS;
    case QuantScheme::Q2_K: return DType::Q2_K;
    case QuantScheme::Q3_K: return DType::Q3_K;
    default: return routed_expert ? DType::Q4_K : DType::Q8_0;
  }
}

nlohmann::json quantization_config(QuantScheme scheme) {
  return {{"quant_method", "crossmoe"},
          {"scheme", quant_scheme_name(scheme)},
          {"format", "block-quantized matrices stored as U8 with safetensors metadata crossmoe.dtype.<tensor>"}};
}

void write_quantized(const fs::path& model, const fs::path& dir, QuantScheme scheme, QuantizeSummary* summary) {
  const ModelConfig config = read_model_config(model);
  // A GGUF file's description goes out as a crossmoe config.json, which has no latent attention (and
  // a deepseek2 file's routing need not be what DeepSeek's config.json keys mean).
  require(!(config.latent_attention && is_gguf_file(model)),
          model.string() + ": a deepseek2 GGUF file is not quantized into a model directory (crossmoe's config.json cannot "
                           "describe latent attention): quantize the Hugging Face checkpoint, or the file with llama-quantize");
  const Checkpoint checkpoint(model);
  check_weights_match(checkpoint, config);
  const std::set<std::string> experts = routed_expert_tensors(config);

  std::vector<TensorToWrite> tensors;
  std::vector<const TensorView*> sources;
  for (const TensorSpec& spec : expected_tensors(config)) {
    const TensorView& t = checkpoint.get(spec.name, spec.shape);
    require(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16,
            "tensor '" + t.name + "' has dtype " + dtype_name(t.dtype) + "; quantize reads F32, BF16 or F16");
    DType type = t.dtype;
    if (spec.role == TensorRole::Weight) {
      const DType wanted = weight_type(scheme, experts.count(spec.name) > 0);
      type = block_type_for(wanted, spec.shape[1], t.dtype);
      if (type != wanted)
        summary->fallbacks.push_back(spec.name + ": " + dtype_name(wanted) + " -> " + dtype_name(type) + " (" +
                                     std::to_string(spec.shape[1]) + " columns)");
      ++summary->matrices_per_dtype[dtype_name(type)];
    }
    tensors.push_back({spec.name, type, spec.shape, nullptr});
    sources.push_back(&t);
  }
  // Element-wise tensors first, widest elements first, then the blocks (any size): every tensor
  // starts aligned to its element size.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  const auto rank = [&](size_t i) { return dtype_block(tensors[i].dtype) > 1 ? 0 : dtype_size(tensors[i].dtype); };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rank(a) > rank(b); });
  std::vector<TensorToWrite> ordered;
  for (size_t i : order) ordered.push_back(tensors[i]);

  std::vector<float> row;
  write_safetensors(dir / "model.safetensors", ordered, [&](size_t k, std::byte* out) {
    const TensorToWrite& w = ordered[k];
    const TensorView& t = *sources[order[k]];
    if (w.dtype == t.dtype) {
      std::memcpy(out, t.data, t.nbytes);
      return;
    }
    const int64_t rows = w.shape[0], cols = w.shape[1];
    const size_t in_row = dtype_row_bytes(t.dtype, cols), out_row = dtype_row_bytes(w.dtype, cols);
    row.resize(size_t(cols));
    for (int64_t r = 0; r < rows; ++r) {
      kernels::to_f32(t.data + size_t(r) * in_row, t.dtype, cols, row.data());
      try {
        quant::quantize_row(w.dtype, row.data(), cols, out + size_t(r) * out_row);
      } catch (const Error& e) {
        throw Error("tensor '" + w.name + "' row " + std::to_string(r) + ": " + e.what());
      }
    }
  });

  if (is_gguf_file(model)) {  // the tokenizer and chat template from its metadata; config.json from the description
    if (const auto tokenizer = model_tokenizer_json(model)) write_json_file(dir / "tokenizer.json", *tokenizer);
    if (const auto tokenizer_config = model_tokenizer_config(model)) write_json_file(dir / "tokenizer_config.json", *tokenizer_config);
    nlohmann::json config_json = to_crossmoe_json(config);
    config_json["quantization_config"] = quantization_config(scheme);
    write_json_file(dir / "config.json", config_json);
    return;
  }
  for (const auto& entry : fs::directory_iterator(model)) {
    const std::string name = entry.path().filename().string();
    const bool weights = entry.path().extension() == ".safetensors" || name == "model.safetensors.index.json";
    if (!entry.is_regular_file() || weights || name == "config.json") continue;
    fs::copy_file(entry.path(), dir / name);
  }
  nlohmann::json config_json = read_json_file(model / "config.json");
  config_json["quantization_config"] = quantization_config(scheme);
  write_json_file(dir / "config.json", config_json);
}

}  // namespace

QuantizeSummary quantize_model(const fs::path& model, const fs::path& out_arg, QuantScheme scheme) {
  fs::path out = out_arg.lexically_normal();
  if (!out.has_filename()) out = out.parent_path();  // "dir/"
  require(!out.empty() && out.filename() != "..", "bad output directory '" + out_arg.string() + "'");
  require(!fs::exists(fs::symlink_status(out)), out.string() + " exists; quantize writes a new directory");
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  require(fs::is_directory(parent), "the parent directory of " + out.string() + " does not exist");
  const fs::path tmp = parent / ('.' + out.filename().string() + ".partial-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directory(tmp);
  QuantizeSummary summary;
  try {
    write_quantized(model, tmp, scheme, &summary);
    fs::rename(tmp, out);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  return summary;
}

}  // namespace crossmoe
