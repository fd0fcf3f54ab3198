#include "runtime/gguf_export.hpp"

#include <cstring>
#include <map>

#include "kernels/kernels.hpp"
#include "model/checkpoint.hpp"
#include "model/gguf_model.hpp"
#include "model/hf_config.hpp"
#include "model/tensor_names.hpp"
#include "runtime/model_files.hpp"
#include "util/error.hpp"

namespace crossmoe {

GgufExportSummary export_gguf(const std::filesystem::path& model, const std::filesystem::path& out) {
  const ModelConfig config = read_model_config(model);
  const std::string arch = gguf_architecture(config);
  const Checkpoint checkpoint(model);
  check_weights_match(checkpoint, config);
  require(!std::filesystem::exists(out) || std::filesystem::is_regular_file(out),
          out.string() + " exists and is not a regular file");

  GgufWriter writer;
  add_gguf_model_metadata(writer, config, model.filename().empty() ? model.parent_path().filename().string()
                                                                    : model.filename().string());
  writer.add_u32(arch + ".vocab_size", uint32_t(config.vocab_size));
  GgufExportSummary summary{arch, 0, false};
  if (const std::optional<nlohmann::json> tokenizer = model_tokenizer_json(model)) {
    // Refuse a tokenizer the runtime itself cannot run before writing it for another.
    Tokenizer check(*tokenizer);
    add_gguf_tokenizer_metadata(writer, config, *tokenizer, model_tokenizer_config(model).value_or(nlohmann::json::object()));
    summary.tokenizer = true;
  } else {
    writer.add_string("tokenizer.ggml.model", "no_vocab");
  }

  // Tensors in the order of the description; a layer's experts are gathered into one tensor each
  // for gate, up and down ([E, rows, cols]).
  struct Merged {
    DType dtype;
    std::vector<int64_t> ne;
    std::vector<const TensorView*> parts;
  };
  std::map<std::string, Merged> merged;
  for (const TensorSpec& spec : expected_tensors(config)) {
    const TensorView& t = checkpoint.get(spec.name, spec.shape);
    const GgufName g = gguf_name_of(config, arch, spec.name);
    require(!g.name.empty(), "tensor '" + spec.name + "' has no GGUF name for " + arch);
    const std::vector<int64_t> ne(spec.shape.rbegin(), spec.shape.rend());
    if (g.expert >= 0) {
      auto [it, added] = merged.try_emplace(g.name, Merged{t.dtype, {ne[0], ne[1], config.moe.num_experts}, {}});
      require(it->second.dtype == t.dtype, "the experts of '" + g.name + "' have different dtypes; GGUF stores them in one tensor");
      it->second.parts.push_back(&t);
      if (int(it->second.parts.size()) == config.moe.num_experts) {
        const Merged& m = it->second;
        writer.add_tensor(g.name, m.dtype, m.ne, [parts = m.parts](std::byte* out) {
          for (const TensorView* p : parts) {
            std::memcpy(out, p->data, p->nbytes);
            out += p->nbytes;
          }
        });
        ++summary.tensors;
      }
      continue;
    }
    if (spec.role != TensorRole::Weight) {  // norms and biases: F32, llama Q/K biases in llama.cpp's order
      writer.add_tensor(g.name, DType::F32, ne, [&t, heads = g.permute_heads](std::byte* out) {
        std::vector<float> values(size_t(t.numel()));
        kernels::to_f32(t.data, t.dtype, t.numel(), values.data());
        if (heads > 0)
          permute_head_rows(reinterpret_cast<const std::byte*>(values.data()), out, t.numel(), sizeof(float), heads, true);
        else
          std::memcpy(out, values.data(), values.size() * sizeof(float));
      });
    } else if (g.permute_heads > 0) {
      const int64_t rows = spec.shape[0];
      require(rows % g.permute_heads == 0 && (rows / g.permute_heads) % 2 == 0,
              "tensor '" + spec.name + "' is not whole heads of even size");
      writer.add_tensor(g.name, t.dtype, ne, [&t, rows, heads = g.permute_heads](std::byte* out) {
        permute_head_rows(t.data, out, rows, t.nbytes / size_t(rows), heads, true);
      });
    } else {
      writer.add_tensor(g.name, t.dtype, ne, [&t](std::byte* out) { std::memcpy(out, t.data, t.nbytes); });
    }
    ++summary.tensors;
  }
  const std::vector<float> freq_factors = gguf_rope_freq_factors(config);
  if (!freq_factors.empty()) {
    writer.add_tensor("rope_freqs.weight", DType::F32, {int64_t(freq_factors.size())}, [freq_factors](std::byte* out) {
      std::memcpy(out, freq_factors.data(), freq_factors.size() * sizeof(float));
    });
    ++summary.tensors;
  }
  writer.write(out);
  return summary;
}

}  // namespace crossmoe
