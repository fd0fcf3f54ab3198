#pragma once
// safetensors files: mapped, with the header treated as untrusted input, and optionally read
// into memory (load_into_memory); written atomically (temporary file + rename).
//
// Format: 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
// then the data buffer. Every entry is checked before any byte of data is touched: known dtype,
// non-negative shape whose byte size does not overflow and equals end - begin, offsets inside
// the buffer, entries contiguous from 0 to the buffer's end. (Alignment is the runtime's concern:
// the format does not promise it, though every common writer pads the header to 8 bytes.)
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "util/anonymous_memory.hpp"
#include "util/dtype.hpp"
#include "util/mapped_file.hpp"

namespace crossmoe {

// Block-quantized tensors (Q8_0, Q4_K; util/quant.hpp), which safetensors has no dtype for, are
// stored as U8 [rows, row bytes] with a metadata entry "crossmoe.dtype.<tensor name>": "Q8_0"
// or "Q4_K". crossmoe reads them back as [rows, cols] of the block type; a reader that ignores
// the metadata sees U8 tensors of the wrong shape and refuses them.
inline const std::string kBlockDTypeMetadataPrefix = "crossmoe.dtype.";

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;  // null for a tensor left in the file (load_into_memory's keep)
  size_t nbytes = 0;
  uint64_t file_offset = 0;          // of its first byte in the file

  int64_t numel() const;
  std::string shape_string() const;  // "[64, 320]"
};

class SafetensorsFile {
 public:
  // Opens and validates; throws Error naming the file and the problem.
  explicit SafetensorsFile(const std::filesystem::path& path);
  // Validates an in-memory image (the fuzz test's entry point); `bytes` must outlive this.
  SafetensorsFile(const std::byte* bytes, size_t size, const std::string& label);
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Reads the tensor data into anonymous memory (read once, now) and drops the file mapping.
  // Decode streams weights faster from anonymous pages than from page-cache pages on the
  // machines measured (docs/benchmarks.md); mapping keeps memory use lazy instead. The data is
  // read from the file by several threads at once (first touch of the new pages is most of the
  // time) and the mapping is never touched, so one copy is resident, not two. Tensors for which
  // `keep` is false get no memory: their data becomes null and they are read by file_offset
  // (runtime/expert_cache). Throws naming the file if it cannot be read in full.
  void load_into_memory(const std::function<bool(const std::string&)>& keep = {});

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& label() const { return label_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void parse(const std::byte* bytes, size_t size);
  std::filesystem::path path_;
  std::string label_;
  MappedFile file_;  // mapped until load_into_memory; none for an in-memory image
  bool in_memory_ = false;
  AnonymousMemory memory_;   // the tensors load_into_memory kept
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A block-type tensor is written as described above (shape: its logical [rows, cols]).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // the tensor's bytes: numel * dtype_size, or rows * dtype_row_bytes(cols)
};

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Streaming form: fill(i, out) writes tensor i's bytes into `out`, one tensor at a time, so a
// model larger than memory can be written. The `data` fields of `tensors` are ignored.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::function<void(size_t, std::byte*)>& fill,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace crossmoe
