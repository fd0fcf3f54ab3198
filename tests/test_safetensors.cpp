// safetensors reading and writing, and the checkpoint directory on top of it.
#include <gtest/gtest.h>

#include "file_bytes.hpp"
#include "temp_dir.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "model/checkpoint.hpp"
#include "model/safetensors.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  const fs::path d = testing_paths::temp_path("st_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_all(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// A file with a header given as text and `data_bytes` zero bytes of data.
void write_raw(const fs::path& p, const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) s[i] = char((n >> (8 * i)) & 0xff);
  write_all(p, s + header + std::string(data_bytes, '\0'));
}

std::string error_of(const fs::path& p) {
  try {
    SafetensorsFile f(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTripsEveryComputeDtype) {
  const fs::path d = temp_dir("roundtrip");
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f};
  const std::vector<uint16_t> bf16 = {f32_to_bf16(1.5f), f32_to_bf16(-2.0f), f32_to_bf16(3.0f)};
  const std::vector<uint16_t> f16 = {f32_to_f16(0.5f), f32_to_f16(-65504.0f)};
  write_safetensors(d / "m.safetensors",
                    {{"a", DType::F32, {2, 3}, f32.data()}, {"b", DType::BF16, {3}, bf16.data()},
                     {"c", DType::F16, {1, 2}, f16.data()}, {"empty", DType::F32, {0, 4}, nullptr}},
                    {{"format", "pt"}});
  const SafetensorsFile f(d / "m.safetensors");
  ASSERT_EQ(f.tensors().size(), 4u);
  const TensorView& a = f.tensors().at("a");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(a.data, f32.data(), 24), 0);
  EXPECT_EQ(bf16_to_f32(reinterpret_cast<const uint16_t*>(f.tensors().at("b").data)[1]), -2.0f);
  EXPECT_EQ(f16_to_f32(reinterpret_cast<const uint16_t*>(f.tensors().at("c").data)[1]), -65504.0f);
  EXPECT_EQ(f.tensors().at("empty").nbytes, 0u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
}

TEST(Safetensors, LoadsIntoMemoryInParallelKeepingWhatIsAsked) {
  // Many pieces (several threads' worth of 8 MiB reads) with odd sizes between them, so pieces and
  // alignment padding are all exercised; the bytes must be the file's, each tensor on a cache line
  // (kTensorAlignment) whatever its offset in the file.
  const fs::path d = temp_dir("load");
  std::vector<std::vector<float>> data;
  std::vector<TensorToWrite> tensors;
  for (int i = 0; i < 7; ++i) {
    data.emplace_back(size_t(i % 2 ? 3'000'001 : 17 + i));
    for (size_t j = 0; j < data.back().size(); ++j) data.back()[j] = float(i * 1000 + j % 997);
  }
  for (int i = 0; i < 7; ++i) tensors.push_back({"t" + std::to_string(i), DType::F32, {int64_t(data[i].size())}, data[i].data()});
  write_safetensors(d / "m.safetensors", tensors);
  SafetensorsFile all(d / "m.safetensors");
  all.load_into_memory();
  SafetensorsFile some(d / "m.safetensors");
  some.load_into_memory([](const std::string& name) { return name != "t1" && name != "t4"; });
  int off_line = 0;  // tensors whose offset in the file is not on a line
  for (int i = 0; i < 7; ++i) {
    const TensorView& a = all.tensors().at("t" + std::to_string(i));
    ASSERT_NE(a.data, nullptr);
    EXPECT_EQ(std::memcmp(a.data, data[i].data(), a.nbytes), 0) << i;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data) % kTensorAlignment, 0u) << i;
    off_line += a.file_offset % kTensorAlignment != 0;
    const TensorView& s = some.tensors().at("t" + std::to_string(i));
    if (i == 1 || i == 4) {
      EXPECT_EQ(s.data, nullptr);
    } else {
      ASSERT_NE(s.data, nullptr);
      EXPECT_EQ(std::memcmp(s.data, data[i].data(), s.nbytes), 0) << i;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(s.data) % kTensorAlignment, 0u) << i;
    }
  }
  EXPECT_GT(off_line, 0) << "the file should hold tensors off a cache line";
  // A file that shrinks between opening and loading is an error naming it, not zeros.
  SafetensorsFile shrinking(d / "m.safetensors");
  fs::resize_file(d / "m.safetensors", fs::file_size(d / "m.safetensors") - 100);
  try {
    shrinking.load_into_memory();
    FAIL() << "a truncated file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("m.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("ends early"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, RejectsMalformedFilesWithAReason) {
  const fs::path d = temp_dir("bad");
  const fs::path p = d / "x.safetensors";
  write_all(p, "abc");
  EXPECT_NE(error_of(p).find("too short"), std::string::npos);
  write_raw(p, "{}", 0);
  std::string bytes = testing_files::bytes_of(p);
  bytes[0] = char(0xff), bytes[1] = char(0xff), bytes[2] = char(0xff);
  write_all(p, bytes);
  EXPECT_NE(error_of(p).find("exceeds the file size"), std::string::npos);
  write_raw(p, "{not json", 0);
  EXPECT_NE(error_of(p).find("not valid JSON"), std::string::npos);
  write_raw(p, R"({"t":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(error_of(p).find("unknown dtype 'Q4'"), std::string::npos);
  write_raw(p, R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(error_of(p).find("needs 8 bytes"), std::string::npos);
  write_raw(p, R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4);  // truncated data
  EXPECT_NE(error_of(p).find("outside the data buffer"), std::string::npos);
  write_raw(p, R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8);
  EXPECT_NE(error_of(p).find("non-negative"), std::string::npos);
  write_raw(p, R"({"t":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}})", 8);
  EXPECT_NE(error_of(p).find("too large"), std::string::npos);
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8);
  EXPECT_NE(error_of(p).find("overlaps"), std::string::npos);
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8);
  EXPECT_NE(error_of(p).find("cover"), std::string::npos);
  EXPECT_NE(error_of(d / "missing.safetensors").find("cannot open"), std::string::npos);
}

TEST(Checkpoint, ShardedIndexAndShapeChecks) {
  const fs::path d = temp_dir("sharded");
  const std::vector<float> x(6, 1.0f);
  write_safetensors(d / "s1.safetensors", {{"a", DType::F32, {2, 3}, x.data()}});
  write_safetensors(d / "s2.safetensors", {{"b", DType::F32, {6}, x.data()}});
  write_json_file(d / "model.safetensors.index.json",
                  {{"metadata", {{"total_size", 48}}}, {"weight_map", {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}}}});
  const Checkpoint ck(d);
  EXPECT_EQ(ck.num_tensors(), 2u);
  EXPECT_EQ(ck.total_bytes(), 48u);
  EXPECT_EQ(ck.get("b", {6}).numel(), 6);
  try {
    ck.get("a", {3, 2});
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "tensor 'a' has shape [2, 3], expected [3, 2]");
  }
  EXPECT_THROW(ck.get("zzz", {1}), Error);
  write_json_file(d / "model.safetensors.index.json", {{"weight_map", {{"a", "s2.safetensors"}}}});
  EXPECT_THROW(Checkpoint{d}, Error);  // the index points at the wrong shard
  write_json_file(d / "model.safetensors.index.json", {{"weight_map", {{"a", "../s1.safetensors"}}}});
  EXPECT_THROW(Checkpoint{d}, Error);
  EXPECT_THROW(Checkpoint{temp_dir("empty")}, Error);
}

}  // namespace
