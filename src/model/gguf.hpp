#pragma once
// GGUF files (llama.cpp's single-file model format): read by mmap with every field treated as
// untrusted input, and written atomically (temporary file + rename).
//
// Layout (version 2 and 3, little-endian):
//   "GGUF" | u32 version | u64 tensor count | u64 key-value count
//   key-values: string key | u32 value type | value  (a string is u64 length + bytes; an array is
//     u32 element type + u64 count + elements)
//   tensor infos: string name | u32 dimensions | u64 ne[dimensions] (ne[0] varies fastest: a
//     matrix [rows, cols] is ne = {cols, rows}) | u32 ggml type | u64 offset into the data
//   padding to `general.alignment` (default 32), then the data; every offset is aligned.
// Before any tensor byte is touched: the counts, strings and arrays fit the file, the type is one
// this reader knows, the byte size does not overflow, offsets are aligned and lie inside the data,
// and no two tensors overlap.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "util/anonymous_memory.hpp"
#include "util/dtype.hpp"
#include "util/mapped_file.hpp"

namespace crossmoe {

enum class GgufType : uint32_t { U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64 };

// One metadata value. Scalars: integer types in `integer` (u64 values above INT64_MAX are refused),
// F32/F64 in `real`, Bool in `integer` (0/1), String in `text`. Arrays: element type in
// `element`, strings in `texts`, integers in `integers`, reals in `reals`.
struct GgufValue {
  GgufType type = GgufType::U32;
  int64_t integer = 0;
  double real = 0;
  std::string text;
  GgufType element = GgufType::U32;
  std::vector<std::string> texts;
  std::vector<int64_t> integers;
  std::vector<double> reals;
  size_t size() const;  // array length (1 for a scalar)
};

// ggml type numbers of the element types this project computes with or reads.
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14,
                                  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
                                  IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39 };
bool ggml_to_dtype(uint32_t ggml_type, DType* out);
uint32_t dtype_to_ggml(DType type);  // throws for types GGUF cannot hold

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;  // as stored: ne[0] is the row length
  DType dtype = DType::F32;
  const std::byte* data = nullptr;  // null for a tensor left in the file (copy_into_memory's left_out)
  size_t nbytes = 0;
  uint64_t file_offset = 0;          // of its first byte in the file (in the image, for one in memory)
};

class GgufFile {
 public:
  // Opens and validates; throws Error naming the file and the problem.
  explicit GgufFile(const std::filesystem::path& path);
  // Validates an in-memory image (the fuzz target's entry point); `bytes` must outlive this.
  GgufFile(const std::byte* bytes, size_t size, const std::string& label);
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  // As SafetensorsFile::load_into_memory: the data section moves to anonymous memory, but for the
  // tensors named in left_out, which get none (their data becomes null; they are read by
  // file_offset: a layer's routed experts under runtime/expert_cache).
  void copy_into_memory(const std::set<std::string>& left_out = {});

  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(const std::string& name) const;
  const std::string& label() const { return label_; }
  const std::filesystem::path& path() const { return path_; }  // empty for an in-memory image
  uint32_t version() const { return version_; }

  // Typed metadata access; errors name the file and key.
  const GgufValue* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  int64_t integer(const std::string& key) const;
  int64_t integer(const std::string& key, int64_t fallback) const;
  double real(const std::string& key, double fallback) const;  // integers accepted too
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key) const;
  std::string string(const std::string& key, const std::string& fallback) const;

 private:
  void parse(const std::byte* bytes, size_t size);
  std::filesystem::path path_;
  std::string label_;
  MappedFile file_;          // until copy_into_memory; none for an in-memory image
  uint32_t version_ = 0;
  AnonymousMemory memory_;   // the data section after copy_into_memory
  const std::byte* data_begin_ = nullptr;
  size_t data_size_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// True when the file starts with the GGUF magic (a directory or a missing file is not one).
bool is_gguf_file(const std::filesystem::path& path);

// A GGUF file being written: metadata in the order given, then tensors, 32-byte aligned.
class GgufWriter {
 public:
  void add(const std::string& key, GgufValue value);
  void add_string(const std::string& key, const std::string& value);
  void add_u32(const std::string& key, uint32_t value);
  void add_f32(const std::string& key, float value);
  void add_bool(const std::string& key, bool value);
  void add_strings(const std::string& key, std::vector<std::string> values);
  void add_i32s(const std::string& key, std::vector<int64_t> values);
  void add_f32s(const std::string& key, std::vector<double> values);
  // `fill(out)` writes the tensor's bytes (rows * dtype_row_bytes(type, ne[0])) when the file is
  // written, so a model larger than memory streams out one tensor at a time.
  void add_tensor(const std::string& name, DType type, std::vector<int64_t> ne, std::function<void(std::byte*)> fill);
  void write(const std::filesystem::path& path) const;

 private:
  struct Tensor {
    std::string name;
    DType type;
    std::vector<int64_t> ne;
    std::function<void(std::byte*)> fill;
  };
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<Tensor> tensors_;
};

}  // namespace crossmoe
