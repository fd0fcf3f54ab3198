#pragma once
// Reading and writing JSON files with errors that name the file.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace crossmoe {

// Refuses what is not a regular file (a FIFO would block the read) before opening it.
nlohmann::json read_json_file(const std::filesystem::path& path);
// Atomic: written to PATH.tmp, then renamed over PATH.
void write_json_file(const std::filesystem::path& path, const nlohmann::json& value);

// The JSON library's message without its "[json.exception.parse_error.101] " tag, for users.
std::string json_error_text(const nlohmann::json::exception& e);

}  // namespace crossmoe
