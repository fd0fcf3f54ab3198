#pragma once
// Reading and writing JSON files with errors that name the file.
#include <filesystem>
#include <nlohmann/json.hpp>

namespace crossmoe {

nlohmann::json read_json_file(const std::filesystem::path& path);
// Atomic: written to PATH.tmp, then renamed over PATH.
void write_json_file(const std::filesystem::path& path, const nlohmann::json& value);

}  // namespace crossmoe
