#include "model/gguf.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <set>

#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"
#include "util/round_up.hpp"

namespace crossmoe {

namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint32_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS

std::string type_name(GgufType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < std::size(names) ? names[i] : "type " + std::to_string(i);
}

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

// Sequential little-endian reads that never pass the end; every failure names what was read.
class Reader {
 public:
  Reader(const std::byte* p, size_t size, const std::string& label) : p_(p), size_(size), label_(label) {}
  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(label_ + ": " + what + " (at byte " + std::to_string(pos_) + ")");
  }
  const std::byte* take(size_t n, const std::string& what) {
    if (n > left()) fail("file ends inside " + what);
    const std::byte* at = p_ + pos_;
    pos_ += n;
    return at;
  }
  template <class T>
  T scalar(const std::string& what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  std::string string(const std::string& what) {
    const uint64_t n = scalar<uint64_t>(what + " length");
    if (n > left()) fail(what + " length " + std::to_string(n) + " runs past the end of the file");
    const std::byte* s = take(size_t(n), what);
    return std::string(reinterpret_cast<const char*>(s), size_t(n));
  }
  // A scalar of type t into value's integer or real field.
  void scalar_value(GgufType t, GgufValue& v, const std::string& what) {
    switch (t) {
      case GgufType::U8: v.integer = scalar<uint8_t>(what); break;
      case GgufType::I8: v.integer = scalar<int8_t>(what); break;
      case GgufType::U16: v.integer = scalar<uint16_t>(what); break;
      case GgufType::I16: v.integer = scalar<int16_t>(what); break;
      case GgufType::U32: v.integer = scalar<uint32_t>(what); break;
      case GgufType::I32: v.integer = scalar<int32_t>(what); break;
      case GgufType::I64: v.integer = scalar<int64_t>(what); break;
      case GgufType::U64: {
        const uint64_t u = scalar<uint64_t>(what);
        if (u > uint64_t(INT64_MAX)) fail(what + ": value " + std::to_string(u) + " is too large");
        v.integer = int64_t(u);
        break;
      }
      case GgufType::Bool: {
        const uint8_t b = scalar<uint8_t>(what);
        if (b > 1) fail(what + ": bool value " + std::to_string(b) + " is neither 0 nor 1");
        v.integer = b;
        break;
      }
      case GgufType::F32: v.real = scalar<float>(what); break;
      case GgufType::F64: v.real = scalar<double>(what); break;
      default: fail(what + ": not a scalar type");
    }
  }

 private:
  const std::byte* p_;
  size_t size_, pos_ = 0;
  const std::string& label_;
};

GgufType value_type(Reader& r, const std::string& what) {
  const uint32_t t = r.scalar<uint32_t>(what + " type");
  if (t > uint32_t(GgufType::F64)) r.fail(what + ": unknown value type " + std::to_string(t));
  return GgufType(t);
}

bool is_real(GgufType t) { return t == GgufType::F32 || t == GgufType::F64; }

}  // namespace

size_t GgufValue::size() const {
  if (type != GgufType::Array) return 1;
  return element == GgufType::String ? texts.size() : is_real(element) ? reals.size() : integers.size();
}

namespace {
constexpr const char* kReadTypes = "F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL, MXFP4, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, "
                                   "IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0";

// A ggml type this reader refuses, by ggml's name where it has one (ggml.h's enum), then its number.
std::string unsupported_type_name(uint32_t type) {
  static const std::map<uint32_t, const char*> kNames = {
      {9, "Q8_1"}, {15, "Q8_K"}, {40, "NVFP4"}};
  const auto it = kNames.find(type);
  return it == kNames.end() ? std::to_string(type) : std::string(it->second) + " (" + std::to_string(type) + ")";
}
}  // namespace

bool ggml_to_dtype(uint32_t ggml_type, DType* out) {
  switch (GgmlType(ggml_type)) {
    case GgmlType::F32: *out = DType::F32; return true;
    case GgmlType::F16: *out = DType::F16; return true;
    case GgmlType::BF16: *out = DType::BF16; return true;
    case GgmlType::Q4_0: *out = DType::Q4_0; return true;
    case GgmlType::Q5_0: *out = DType::Q5_0; return true;
    case GgmlType::Q4_1: *out = DType::Q4_1; return true;
    case GgmlType::Q5_1: *out = DType::Q5_1; return true;
    case GgmlType::IQ4_NL: *out = DType::IQ4_NL; return true;
    case GgmlType::MXFP4: *out = DType::MXFP4; return true;
    case GgmlType::IQ4_XS: *out = DType::IQ4_XS; return true;
    case GgmlType::Q8_0: *out = DType::Q8_0; return true;
    case GgmlType::Q2_K: *out = DType::Q2_K; return true;
    case GgmlType::Q3_K: *out = DType::Q3_K; return true;
    case GgmlType::Q4_K: *out = DType::Q4_K; return true;
    case GgmlType::Q5_K: *out = DType::Q5_K; return true;
    case GgmlType::Q6_K: *out = DType::Q6_K; return true;
    case GgmlType::IQ2_XXS: *out = DType::IQ2_XXS; return true;
    case GgmlType::IQ2_XS: *out = DType::IQ2_XS; return true;
    case GgmlType::IQ2_S: *out = DType::IQ2_S; return true;
    case GgmlType::IQ3_XXS: *out = DType::IQ3_XXS; return true;
    case GgmlType::IQ3_S: *out = DType::IQ3_S; return true;
    case GgmlType::IQ1_S: *out = DType::IQ1_S; return true;
    case GgmlType::IQ1_M: *out = DType::IQ1_M; return true;
    case GgmlType::TQ1_0: *out = DType::TQ1_0; return true;
    case GgmlType::TQ2_0: *out = DType::TQ2_0; return true;
  }
  return false;
}

uint32_t dtype_to_ggml(DType type) {
  switch (type) {
    case DType::F32: return uint32_t(GgmlType::F32);
    case DType::F16: return uint32_t(GgmlType::F16);
    case DType::BF16: return uint32_t(GgmlType::BF16);
    case DType::Q4_0: return uint32_t(GgmlType::Q4_0);
    case DType::Q5_0: return uint32_t(GgmlType::Q5_0);
    case DType::Q4_1: return uint32_t(GgmlType::Q4_1);
    case DType::Q5_1: return uint32_t(GgmlType::Q5_1);
    case DType::IQ4_NL: return uint32_t(GgmlType::IQ4_NL);
    case DType::MXFP4: return uint32_t(GgmlType::MXFP4);
    case DType::IQ4_XS: return uint32_t(GgmlType::IQ4_XS);
    case DType::Q8_0: return uint32_t(GgmlType::Q8_0);
    case DType::Q2_K: return uint32_t(GgmlType::Q2_K);
    case DType::Q3_K: return uint32_t(GgmlType::Q3_K);
    case DType::Q4_K: return uint32_t(GgmlType::Q4_K);
    case DType::Q5_K: return uint32_t(GgmlType::Q5_K);
    case DType::Q6_K: return uint32_t(GgmlType::Q6_K);
    case DType::IQ2_XXS: return uint32_t(GgmlType::IQ2_XXS);
    case DType::IQ2_XS: return uint32_t(GgmlType::IQ2_XS);
    case DType::IQ2_S: return uint32_t(GgmlType::IQ2_S);
    case DType::IQ3_XXS: return uint32_t(GgmlType::IQ3_XXS);
    case DType::IQ3_S: return uint32_t(GgmlType::IQ3_S);
    case DType::IQ1_S: return uint32_t(GgmlType::IQ1_S);
    case DType::IQ1_M: return uint32_t(GgmlType::IQ1_M);
    case DType::TQ1_0: return uint32_t(GgmlType::TQ1_0);
    case DType::TQ2_0: return uint32_t(GgmlType::TQ2_0);
    default: throw Error("GGUF: tensors of dtype " + dtype_name(type) + " cannot be written (" + std::string(kReadTypes) + ")");
  }
}

GgufFile::GgufFile(const std::filesystem::path& path)
    : path_(path), label_(path.string()), file_(path, label_, 24, "GGUF") {
  parse(file_.data(), file_.size());
}

GgufFile::GgufFile(const std::byte* bytes, size_t size, const std::string& label) : label_(label) { parse(bytes, size); }

void GgufFile::copy_into_memory(const std::set<std::string>& left_out) {
  if (!file_.data() || data_size_ == 0) return;
  // Every tensor starts on a cache line (kTensorAlignment), whatever its offset in the file: GGUF
  // aligns tensors to 32 bytes only, and the kernels' 64-byte loads of a matrix 32 bytes off a line
  // each straddle two lines (docs/benchmarks.md, "Weights on cache lines"). Tensors left out take
  // no memory.
  size_t size = 0;
  for (const GgufTensor& t : tensors_)
    if (!left_out.count(t.name)) size = round_up(size, kTensorAlignment) + t.nbytes;
  memory_ = AnonymousMemory(size, "the weights of " + label_, {.huge_pages = true});
  std::byte* copy = memory_.data();
  size_t at = 0;
  for (GgufTensor& t : tensors_) {
    if (left_out.count(t.name)) {
      t.data = nullptr;
      continue;
    }
    at = round_up(at, kTensorAlignment);
    std::memcpy(copy + at, t.data, t.nbytes);
    t.data = copy + at;
    at += t.nbytes;
  }
  file_ = MappedFile();
  data_begin_ = copy;
}

void GgufFile::parse(const std::byte* bytes, size_t size) {
  Reader r(bytes, size, label_);
  if (size < 4 || std::memcmp(bytes, kMagic, 4) != 0) r.fail("not a GGUF file (no 'GGUF' magic)");
  r.take(4, "the magic");
  version_ = r.scalar<uint32_t>("the version");
  if (version_ != 2 && version_ != 3)
    r.fail("GGUF version " + std::to_string(version_) + " is not supported (2 or 3)");
  const uint64_t n_tensors = r.scalar<uint64_t>("the tensor count");
  const uint64_t n_kv = r.scalar<uint64_t>("the metadata count");
  // Each entry takes at least 12 (key-value) or 28 (tensor info) bytes: counts past that are lies.
  if (n_kv > r.left() / 12) r.fail("metadata count " + std::to_string(n_kv) + " is more than the file can hold");
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key = r.string("metadata key " + std::to_string(i));
    const std::string what = "metadata '" + key + "'";
    GgufValue v;
    v.type = value_type(r, what);
    if (v.type == GgufType::String) {
      v.text = r.string(what);
    } else if (v.type == GgufType::Array) {
      v.element = value_type(r, what + " element");
      if (v.element == GgufType::Array) r.fail(what + ": arrays of arrays are not supported");
      const uint64_t n = r.scalar<uint64_t>(what + " length");
      const size_t min_size = v.element == GgufType::String ? 8 : scalar_size(v.element);
      if (n > r.left() / min_size) r.fail(what + ": array length " + std::to_string(n) + " runs past the end of the file");
      GgufValue e;
      for (uint64_t j = 0; j < n; ++j) {
        if (v.element == GgufType::String) {
          v.texts.push_back(r.string(what + " element"));
        } else {
          r.scalar_value(v.element, e, what + " element");
          if (is_real(v.element)) v.reals.push_back(e.real);
          else v.integers.push_back(e.integer);
        }
      }
    } else {
      r.scalar_value(v.type, v, what);
    }
    if (!metadata_.emplace(key, std::move(v)).second) r.fail("metadata key '" + key + "' appears twice");
  }
  uint32_t alignment = kDefaultAlignment;
  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::U32 || a->integer == 0 || (a->integer & (a->integer - 1)) != 0)
      r.fail("general.alignment must be a u32 power of two");
    alignment = uint32_t(a->integer);
  }

  if (n_tensors > r.left() / 28) r.fail("tensor count " + std::to_string(n_tensors) + " is more than the file can hold");
  struct Info {
    uint64_t offset, nbytes;
  };
  std::vector<Info> infos;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = r.string("tensor name " + std::to_string(i));
    const std::string what = "tensor '" + t.name + "'";
    const uint32_t dims = r.scalar<uint32_t>(what + " dimension count");
    if (dims == 0 || dims > kMaxDims) r.fail(what + ": " + std::to_string(dims) + " dimensions (1 to 4 supported)");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < dims; ++d) {
      const uint64_t ne = r.scalar<uint64_t>(what + " shape");
      if (ne == 0 || ne > uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, ne, &numel) || numel > uint64_t(INT64_MAX))
        r.fail(what + ": shape entry " + std::to_string(ne) + " is zero or too large");
      t.ne.push_back(int64_t(ne));
    }
    const uint32_t type = r.scalar<uint32_t>(what + " type");
    if (!ggml_to_dtype(type, &t.dtype))
      r.fail(what + ": ggml type " + unsupported_type_name(type) + " is not supported (" + kReadTypes + ")");
    if (t.ne[0] % dtype_block(t.dtype) != 0)
      r.fail(what + ": rows of " + std::to_string(t.ne[0]) + " " + dtype_name(t.dtype) + " values are not whole blocks of " +
             std::to_string(dtype_block(t.dtype)));
    uint64_t nbytes = dtype_row_bytes(t.dtype, t.ne[0]);
    if (__builtin_mul_overflow(nbytes, numel / uint64_t(t.ne[0]), &nbytes)) r.fail(what + ": byte size overflows");
    const uint64_t offset = r.scalar<uint64_t>(what + " offset");
    if (offset % alignment != 0)
      r.fail(what + ": offset " + std::to_string(offset) + " is not a multiple of the alignment " + std::to_string(alignment));
    if (tensor_index_.count(t.name)) r.fail("tensor name '" + t.name + "' appears twice");
    tensor_index_[t.name] = tensors_.size();
    t.nbytes = size_t(nbytes);
    tensors_.push_back(std::move(t));
    infos.push_back({offset, nbytes});
  }
  const size_t data_start = (r.pos() + alignment - 1) / alignment * alignment;
  if (n_tensors > 0 && data_start > size) r.fail("file ends before the tensor data");
  data_begin_ = bytes + std::min(data_start, size);
  data_size_ = size - std::min(data_start, size);
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Info& info = infos[i];
    if (info.offset > data_size_ || info.nbytes > data_size_ - info.offset)
      throw Error(label_ + ": tensor '" + tensors_[i].name + "': its " + std::to_string(info.nbytes) + " bytes at offset " +
                  std::to_string(info.offset) + " lie outside the data section of " + std::to_string(data_size_) +
                  " bytes (a truncated file?)");
    tensors_[i].data = data_begin_ + info.offset;
    tensors_[i].file_offset = uint64_t(data_begin_ - bytes) + info.offset;
    spans.push_back({info.offset, info.offset + info.nbytes});
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].second)
      throw Error(label_ + ": tensor data overlaps at offset " + std::to_string(spans[i].first));
}

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufValue* GgufFile::find(const std::string& key) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

int64_t GgufFile::integer(const std::string& key) const {
  const GgufValue* v = find(key);
  require(v != nullptr, label_ + ": missing metadata '" + key + "'");
  require(v->type != GgufType::Array && v->type != GgufType::String && v->type != GgufType::Bool && !is_real(v->type),
          label_ + ": metadata '" + key + "' must be an integer, not " + type_name(v->type));
  return v->integer;
}

int64_t GgufFile::integer(const std::string& key, int64_t fallback) const { return has(key) ? integer(key) : fallback; }

double GgufFile::real(const std::string& key, double fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (is_real(v->type)) return v->real;
  return double(integer(key));
}

bool GgufFile::boolean(const std::string& key, bool fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  require(v->type == GgufType::Bool, label_ + ": metadata '" + key + "' must be a bool, not " + type_name(v->type));
  return v->integer != 0;
}

std::string GgufFile::string(const std::string& key) const {
  const GgufValue* v = find(key);
  require(v != nullptr, label_ + ": missing metadata '" + key + "'");
  require(v->type == GgufType::String, label_ + ": metadata '" + key + "' must be a string, not " + type_name(v->type));
  return v->text;
}

std::string GgufFile::string(const std::string& key, const std::string& fallback) const {
  return has(key) ? string(key) : fallback;
}

bool is_gguf_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && std::memcmp(magic, kMagic, 4) == 0;
}

void GgufWriter::add(const std::string& key, GgufValue value) {
  for (const auto& [k, v] : metadata_) require(k != key, "GGUF writer: metadata '" + key + "' added twice");
  metadata_.emplace_back(key, std::move(value));
}

void GgufWriter::add_string(const std::string& key, const std::string& value) {
  GgufValue v;
  v.type = GgufType::String;
  v.text = value;
  add(key, std::move(v));
}

void GgufWriter::add_u32(const std::string& key, uint32_t value) {
  GgufValue v;
  v.type = GgufType::U32;
  v.integer = value;
  add(key, std::move(v));
}

void GgufWriter::add_f32(const std::string& key, float value) {
  GgufValue v;
  v.type = GgufType::F32;
  v.real = value;
  add(key, std::move(v));
}

void GgufWriter::add_bool(const std::string& key, bool value) {
  GgufValue v;
  v.type = GgufType::Bool;
  v.integer = value;
  add(key, std::move(v));
}

void GgufWriter::add_strings(const std::string& key, std::vector<std::string> values) {
  GgufValue v;
  v.type = GgufType::Array;
  v.element = GgufType::String;
  v.texts = std::move(values);
  add(key, std::move(v));
}

void GgufWriter::add_i32s(const std::string& key, std::vector<int64_t> values) {
  GgufValue v;
  v.type = GgufType::Array;
  v.element = GgufType::I32;
  v.integers = std::move(values);
  add(key, std::move(v));
}

void GgufWriter::add_f32s(const std::string& key, std::vector<double> values) {
  GgufValue v;
  v.type = GgufType::Array;
  v.element = GgufType::F32;
  v.reals = std::move(values);
  add(key, std::move(v));
}

void GgufWriter::add_tensor(const std::string& name, DType type, std::vector<int64_t> ne, std::function<void(std::byte*)> fill) {
  dtype_to_ggml(type);
  require(!ne.empty() && ne.size() <= kMaxDims, "GGUF writer: tensor '" + name + "' needs 1 to 4 dimensions");
  for (const auto& t : tensors_) require(t.name != name, "GGUF writer: tensor '" + name + "' added twice");
  tensors_.push_back({name, type, std::move(ne), std::move(fill)});
}

namespace {

class ByteSink {
 public:
  explicit ByteSink(std::ostream& out) : out_(out) {}
  template <class T>
  void scalar(T v) { out_.write(reinterpret_cast<const char*>(&v), sizeof(T)); }
  void string(const std::string& s) {
    scalar<uint64_t>(s.size());
    out_.write(s.data(), std::streamsize(s.size()));
  }
  void value(GgufType t, int64_t integer, double real) {
    switch (t) {
      case GgufType::U8: case GgufType::Bool: scalar<uint8_t>(uint8_t(integer)); break;
      case GgufType::I8: scalar<int8_t>(int8_t(integer)); break;
      case GgufType::U16: scalar<uint16_t>(uint16_t(integer)); break;
      case GgufType::I16: scalar<int16_t>(int16_t(integer)); break;
      case GgufType::U32: scalar<uint32_t>(uint32_t(integer)); break;
      case GgufType::I32: scalar<int32_t>(int32_t(integer)); break;
      case GgufType::U64: scalar<uint64_t>(uint64_t(integer)); break;
      case GgufType::I64: scalar<int64_t>(integer); break;
      case GgufType::F32: scalar<float>(float(real)); break;
      case GgufType::F64: scalar<double>(real); break;
      default: throw Error("GGUF writer: not a scalar type");
    }
  }
  void pad_to(uint64_t alignment) {
    const auto at = uint64_t(out_.tellp());
    const std::string zeros((alignment - at % alignment) % alignment, '\0');
    out_.write(zeros.data(), std::streamsize(zeros.size()));
  }

 private:
  std::ostream& out_;
};

}  // namespace

void GgufWriter::write(const std::filesystem::path& path) const {
  write_file_atomically(path, [&](std::ostream& out) {
    ByteSink s(out);
    out.write(kMagic, 4);
    s.scalar<uint32_t>(3);
    s.scalar<uint64_t>(tensors_.size());
    s.scalar<uint64_t>(metadata_.size());
    for (const auto& [key, v] : metadata_) {
      s.string(key);
      s.scalar<uint32_t>(uint32_t(v.type));
      if (v.type == GgufType::String) {
        s.string(v.text);
      } else if (v.type == GgufType::Array) {
        s.scalar<uint32_t>(uint32_t(v.element));
        s.scalar<uint64_t>(v.size());
        if (v.element == GgufType::String)
          for (const auto& t : v.texts) s.string(t);
        else if (is_real(v.element))
          for (double x : v.reals) s.value(v.element, 0, x);
        else
          for (int64_t x : v.integers) s.value(v.element, x, 0);
      } else {
        s.value(v.type, v.integer, v.real);
      }
    }
    std::vector<uint64_t> sizes;
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
      s.string(t.name);
      s.scalar<uint32_t>(uint32_t(t.ne.size()));
      uint64_t rows = 1;
      for (int64_t d : t.ne) {
        s.scalar<uint64_t>(uint64_t(d));
        rows *= uint64_t(d);
      }
      rows /= uint64_t(t.ne[0]);
      s.scalar<uint32_t>(dtype_to_ggml(t.type));
      s.scalar<uint64_t>(offset);
      sizes.push_back(rows * dtype_row_bytes(t.type, t.ne[0]));
      offset += (sizes.back() + kDefaultAlignment - 1) / kDefaultAlignment * kDefaultAlignment;
    }
    std::vector<std::byte> buffer;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      s.pad_to(kDefaultAlignment);
      buffer.assign(sizes[i], std::byte{0});
      tensors_[i].fill(buffer.data());
      out.write(reinterpret_cast<const char*>(buffer.data()), std::streamsize(buffer.size()));
    }
  });
}

}  // namespace crossmoe
