#include "runtime/gguf_export.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>

#include "kernels/kernels.hpp"
#include "model/checkpoint.hpp"
#include "model/gguf_model.hpp"
#include "model/gguf_tokenizer.hpp"
#include "model/hf_config.hpp"
#include "model/tensor_names.hpp"
#include "runtime/model_files.hpp"
#include "util/error.hpp"

namespace crossmoe {

namespace {

// n values of type `from` as type `to` (element-wise types).
void convert_values(const std::byte* in, DType from, int64_t n, DType to, std::byte* out) {
  if (from == to) {
    std::memcpy(out, in, size_t(n) * dtype_size(from));
    return;
  }
  std::vector<float> values(static_cast<size_t>(n));
  kernels::to_f32(in, from, n, values.data());
  for (int64_t i = 0; i < n; ++i) {
    const float x = values[size_t(i)];
    if (to == DType::F32) std::memcpy(out + 4 * i, &x, 4);
    else {
      const uint16_t h = to == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x);
      std::memcpy(out + 2 * i, &h, 2);
    }
  }
}

// Latent attention's kv_b_proj [heads x (qk_nope + v), kv_lora_rank] as llama.cpp's deepseek2
// loads it: attn_k_b [heads, kv_lora_rank, qk_nope] (each head's k rows transposed) and attn_v_b
// [heads, v, kv_lora_rank] (its v rows as they are), in `type` (an element-wise type).
void add_split_kv_b(GgufWriter& writer, const ModelConfig& c, int layer, const TensorView& kv_b, DType type) {
  const LatentAttention& a = *c.latent_attention;
  const int64_t H = c.num_heads, nope = a.qk_nope_head_dim, vd = a.v_head_dim, kvl = a.kv_lora_rank;
  const std::string blk = "blk." + std::to_string(layer) + ".";
  // kv_b's floats, shared by the two writers (each runs once, in order, while the file is written).
  auto values = std::make_shared<std::vector<float>>();
  const auto floats = [values, &kv_b]() -> const std::vector<float>& {
    if (values->empty()) {
      values->resize(size_t(kv_b.numel()));
      kernels::to_f32(kv_b.data, kv_b.dtype, kv_b.numel(), values->data());
    }
    return *values;
  };
  const auto store = [type](const std::vector<float>& v, std::byte* out) {
    convert_values(reinterpret_cast<const std::byte*>(v.data()), DType::F32, int64_t(v.size()), type, out);
  };
  writer.add_tensor(blk + "attn_k_b.weight", type, {nope, kvl, H}, [=](std::byte* out) {
    const std::vector<float>& x = floats();
    std::vector<float> k(size_t(H * kvl * nope));
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < kvl; ++j)
        for (int64_t i = 0; i < nope; ++i) k[size_t((h * kvl + j) * nope + i)] = x[size_t((h * (nope + vd) + i) * kvl + j)];
    store(k, out);
  });
  writer.add_tensor(blk + "attn_v_b.weight", type, {kvl, vd, H}, [=](std::byte* out) {
    const std::vector<float>& x = floats();
    std::vector<float> v(size_t(H * vd * kvl));
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < vd; ++i)
        std::copy_n(x.begin() + (h * (nope + vd) + nope + i) * kvl, kvl, v.begin() + (h * vd + i) * kvl);
    store(v, out);
    values->clear();
    values->shrink_to_fit();
  });
}

}  // namespace

GgufExportSummary export_gguf(const std::filesystem::path& model, const std::filesystem::path& out,
                              std::optional<DType> matrix_type) {
  require(!matrix_type || *matrix_type == DType::F32 || *matrix_type == DType::F16 || *matrix_type == DType::BF16,
          "convert: matrices can be written as F32, F16 or BF16");
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
    add_gguf_special_tokens(writer, config);
  }

  // Tensors in the order of the description; a layer's experts are gathered into one tensor each
  // for gate, up and down ([E, rows, cols]).
  struct Merged {
    DType dtype;
    std::vector<int64_t> ne;
    std::vector<const TensorView*> parts;
  };
  std::map<std::string, Merged> merged;
  std::map<std::string, int> kv_b_layer;  // latent attention's kv_b_proj, written as two tensors
  if (config.latent_attention)
    for (int l = 0; l < config.num_layers; ++l) kv_b_layer[tensor_names::latent_attn(l, LatentPart::KvB)] = l;
  for (const TensorSpec& spec : expected_tensors(config)) {
    const TensorView& t = checkpoint.get(spec.name, spec.shape);
    if (const auto kv_b = kv_b_layer.find(spec.name); kv_b != kv_b_layer.end()) {
      // A block-quantized kv_b goes as f32: attn_k_b's rows are its columns.
      const DType type = dtype_block(t.dtype) > 1 ? DType::F32 : matrix_type.value_or(t.dtype);
      add_split_kv_b(writer, config, kv_b->second, t, type);
      summary.tensors += 2;
      continue;
    }
    const GgufName g = gguf_name_of(config, arch, spec.name);
    require(!g.name.empty(), "tensor '" + spec.name + "' has no GGUF name for " + arch);
    const std::vector<int64_t> ne(spec.shape.rbegin(), spec.shape.rend());
    if (g.expert >= 0) {
      auto [it, added] = merged.try_emplace(g.name, Merged{t.dtype, {ne[0], ne[1], config.moe.num_experts}, {}});
      require(it->second.dtype == t.dtype, "the experts of '" + g.name + "' have different dtypes; GGUF stores them in one tensor");
      it->second.parts.push_back(&t);
      if (int(it->second.parts.size()) == config.moe.num_experts) {
        const Merged& m = it->second;
        // --type converts the experts too (an element-wise type; block-quantized ones stay).
        const DType type = matrix_type && dtype_block(m.dtype) == 1 ? *matrix_type : m.dtype;
        writer.add_tensor(g.name, type, m.ne, [parts = m.parts, type](std::byte* out) {
          for (const TensorView* p : parts) {
            const size_t bytes = type == p->dtype ? p->nbytes : size_t(p->numel()) * dtype_size(type);
            if (type == p->dtype) std::memcpy(out, p->data, bytes);
            else convert_values(p->data, p->dtype, p->numel(), type, out);
            out += bytes;
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
    } else {
      const DType type = matrix_type && dtype_block(t.dtype) == 1 ? *matrix_type : t.dtype;
      const int64_t rows = spec.shape[0];
      require(g.permute_heads == 0 || (rows % g.permute_heads == 0 && (rows / g.permute_heads) % 2 == 0),
              "tensor '" + spec.name + "' is not whole heads of even size");
      writer.add_tensor(g.name, type, ne, [&t, type, rows, heads = g.permute_heads](std::byte* out) {
        const size_t bytes = size_t(t.numel()) * (dtype_block(type) == 1 ? dtype_size(type) : 0);
        std::vector<std::byte> converted;
        const std::byte* data = t.data;
        if (type != t.dtype) {
          converted.resize(bytes);
          convert_values(t.data, t.dtype, t.numel(), type, converted.data());
          data = converted.data();
        }
        const size_t out_bytes = type == t.dtype ? t.nbytes : bytes;
        if (heads > 0) permute_head_rows(data, out, rows, out_bytes / size_t(rows), heads, true);
        else std::memcpy(out, data, out_bytes);
      });
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
