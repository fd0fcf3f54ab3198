#include "model/safetensors.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <atomic>
#include <mutex>
#include <thread>
#include <nlohmann/json.hpp>

#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"
#include "util/round_up.hpp"

namespace crossmoe {

namespace {
constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // the reference implementation's limit
constexpr size_t kMaxRank = 8;
}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : path_(path), label_(path.string()), file_(path, label_, 8, "safetensors") {
  parse(file_.data(), file_.size());
}

SafetensorsFile::SafetensorsFile(const std::byte* bytes, size_t size, const std::string& label)
    : label_(label) {
  parse(bytes, size);
}

void SafetensorsFile::load_into_memory(const std::function<bool(const std::string&)>& keep) {
  if (file_.fd() < 0 || in_memory_) return;  // an in-memory image, or loaded already
  // Each kept tensor is read into its own place, on a cache line (kTensorAlignment): a file aligns
  // tensors to 8 bytes, and the kernels' 64-byte loads of a matrix off a line each straddle two
  // lines (docs/benchmarks.md, "Weights on cache lines").
  struct Place {
    uint64_t file_offset, size;
    size_t at;  // in the new memory
  };
  std::vector<TensorView*> kept;
  for (auto& [name, t] : tensors_) {
    if (keep && !keep(name)) {
      t.data = nullptr;
      continue;
    }
    kept.push_back(&t);
  }
  std::sort(kept.begin(), kept.end(), [](const TensorView* a, const TensorView* b) { return a->file_offset < b->file_offset; });
  std::vector<Place> places;
  size_t total = 0;
  for (TensorView* t : kept) {
    total = round_up(total, kTensorAlignment);
    places.push_back({t->file_offset, t->nbytes, total});
    total += t->nbytes;
  }
  AnonymousMemory loaded(total, "the weights of " + label_, {.huge_pages = true});
  std::byte* const memory = loaded.data();
  // Pieces of at most 8 MiB, taken in turn by the threads.
  constexpr uint64_t kPiece = 8u << 20;
  struct Piece {
    uint64_t file_offset, size;
    std::byte* out;
  };
  std::vector<Piece> pieces;
  for (const Place& r : places)
    for (uint64_t done = 0; done < r.size; done += kPiece)
      pieces.push_back({r.file_offset + done, std::min(kPiece, r.size - done), memory + r.at + done});
  std::atomic<size_t> next{0};
  std::mutex error_mutex;
  std::string error;
  const auto read_pieces = [&] {
    for (size_t i; (i = next.fetch_add(1)) < pieces.size();) {
      const Piece& p = pieces[i];
      for (uint64_t done = 0; done < p.size;) {
        const ssize_t n = ::pread(file_.fd(), p.out + done, p.size - done, off_t(p.file_offset + done));
        if (n > 0) {
          done += uint64_t(n);
          continue;
        }
        if (n < 0 && errno == EINTR) continue;
        const std::lock_guard lock(error_mutex);
        if (error.empty())
          error = "cannot read " + label_ + " at byte " + std::to_string(p.file_offset + done) + ": " +
                  (n == 0 ? std::string("the file ends early (did it change?)") : std::strerror(errno));
        next = pieces.size();
        return;
      }
    }
  };
  const size_t threads = std::min<size_t>(pieces.size(), std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> workers;
  for (size_t i = 1; i < threads; ++i) workers.emplace_back(read_pieces);
  read_pieces();
  for (auto& w : workers) w.join();
  if (!error.empty()) throw Error(error);
  for (size_t i = 0; i < kept.size(); ++i) kept[i]->data = memory + places[i].at;
  file_.unmap();
  memory_ = std::move(loaded);
  in_memory_ = true;
}

void SafetensorsFile::parse(const std::byte* bytes, size_t size) {
  using nlohmann::json;
  const auto fail = [&](const std::string& what) { throw Error(label_ + ": " + what); };
  if (size < 8) fail("file too short for a safetensors header");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | std::to_integer<uint64_t>(bytes[i]);
  if (header_len > kMaxHeaderBytes) fail("header length " + std::to_string(header_len) + " is too large");
  if (header_len > size - 8)
    fail("header length " + std::to_string(header_len) + " exceeds the file size " + std::to_string(size));
  const char* header = reinterpret_cast<const char*>(bytes + 8);
  json j;
  try {
    j = json::parse(header, header + header_len);
  } catch (const json::exception& e) {
    fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail("header is not a JSON object");

  const std::byte* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) fail("__metadata__ is not an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string()) fail("__metadata__ value '" + m.key() + "' is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "': ";
    if (!e.is_object()) fail(where + "entry is not an object");
    if (!e.contains("dtype") || !e["dtype"].is_string()) fail(where + "missing or bad 'dtype'");
    if (!e.contains("shape") || !e["shape"].is_array()) fail(where + "missing or bad 'shape'");
    if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
      fail(where + "missing or bad 'data_offsets'");
    TensorView v;
    v.name = name;
    const std::string dtype = e["dtype"].get<std::string>();
    if (!parse_dtype(dtype, &v.dtype)) fail(where + "unknown dtype '" + dtype + "'");
    if (e["shape"].size() > kMaxRank) fail(where + "rank " + std::to_string(e["shape"].size()) + " is too large");
    uint64_t numel = 1;
    for (const json& d : e["shape"]) {
      if (!d.is_number_unsigned()) fail(where + "shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, dim, &numel))
        fail(where + "shape is too large");
      v.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, uint64_t(dtype_size(v.dtype)), &nbytes) || numel > uint64_t(INT64_MAX))
      fail(where + "shape is too large");
    const json& off = e["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(where + "data_offsets must be non-negative integers");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size)
      fail(where + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
           "] lie outside the data buffer of " + std::to_string(data_size) + " bytes");
    if (end - begin != nbytes)
      fail(where + "shape " + v.shape_string() + " of " + dtype + " needs " + std::to_string(nbytes) +
           " bytes but data_offsets span " + std::to_string(end - begin));
    v.data = data + begin;
    v.nbytes = nbytes;
    v.file_offset = 8 + header_len + begin;
    spans.push_back({begin, end});
    tensors_.emplace(name, std::move(v));
  }
  // Like the reference implementation: the tensors tile the buffer exactly, no gaps or overlaps.
  std::sort(spans.begin(), spans.end());
  uint64_t cursor = 0;
  for (const auto& [begin, end] : spans) {
    if (begin != cursor) fail("tensor data overlaps or leaves a gap at byte " + std::to_string(begin));
    cursor = end;
  }
  if (cursor != data_size)
    fail("data buffer is " + std::to_string(data_size) + " bytes but tensors cover " + std::to_string(cursor));
  for (const auto& [key, value] : metadata_) {
    if (key.rfind(kBlockDTypeMetadataPrefix, 0) != 0) continue;
    const std::string where = "__metadata__ '" + key + "': ";
    const auto it = tensors_.find(key.substr(kBlockDTypeMetadataPrefix.size()));
    if (it == tensors_.end()) fail(where + "names no tensor of this file");
    DType type;
    if (!parse_block_dtype(value, &type)) fail(where + "unknown block type '" + value + "' (expected Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL, MXFP4, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0 or TQ2_0)");
    TensorView& v = it->second;
    const auto block_bytes = int64_t(dtype_row_bytes(type, dtype_block(type)));
    if (v.dtype != DType::U8 || v.shape.size() != 2 || v.shape[1] % block_bytes != 0)
      fail(where + "a " + value + " tensor is stored as U8 [rows, a multiple of " + std::to_string(block_bytes) +
           " bytes], not " + dtype_name(v.dtype) + " " + v.shape_string());
    v.dtype = type;
    v.shape[1] = v.shape[1] / block_bytes * dtype_block(type);
  }
}

namespace {
// Bytes of a tensor of this dtype and shape (the last dimension holds a block type's rows).
uint64_t tensor_bytes(DType dtype, const std::vector<int64_t>& shape) {
  if (shape.empty()) return dtype_size(dtype);
  uint64_t n = dtype_row_bytes(dtype, shape.back());
  for (size_t i = 0; i + 1 < shape.size(); ++i) n *= static_cast<uint64_t>(shape[i]);
  return n;
}
}  // namespace

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_safetensors(
      path, tensors,
      [&](size_t i, std::byte* out) { std::memcpy(out, tensors[i].data, tensor_bytes(tensors[i].dtype, tensors[i].shape)); },
      metadata);
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::function<void(size_t, std::byte*)>& fill,
                       const std::map<std::string, std::string>& metadata) {
  using nlohmann::json;
  json header = json::object();
  std::map<std::string, std::string> all_metadata = metadata;
  uint64_t offset = 0;
  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) {
    const uint64_t n = tensor_bytes(t.dtype, t.shape);
    if (dtype_block(t.dtype) > 1) {
      require(t.shape.size() == 2, "block-type tensor '" + t.name + "' must be a matrix");
      all_metadata[kBlockDTypeMetadataPrefix + t.name] = dtype_name(t.dtype);
      header[t.name] = {{"dtype", "U8"}, {"shape", {t.shape[0], int64_t(dtype_row_bytes(t.dtype, t.shape[1]))}}, {"data_offsets", {offset, offset + n}}};
    } else {
      header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    }
    offset += n;
    sizes.push_back(n);
  }
  if (!all_metadata.empty()) header["__metadata__"] = all_metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  write_file_atomically(path, [&](std::ostream& out) {
    uint64_t len = text.size();
    char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
    out.write(len_bytes, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    std::vector<std::byte> buffer;
    for (size_t i = 0; i < tensors.size(); ++i) {
      buffer.resize(sizes[i]);
      fill(i, buffer.data());
      out.write(reinterpret_cast<const char*>(buffer.data()), static_cast<std::streamsize>(sizes[i]));
    }
  });
}

}  // namespace crossmoe
