#pragma once
// UTF-8 helpers, Unicode normalisation (utf8proc) and GPT-2's byte <-> character map.
#include <cstdint>
#include <string>
#include <string_view>

namespace crossmoe::unicode {

// Length of the valid UTF-8 sequence at s[i], or 0 when the bytes there are not one.
size_t valid_sequence_length(std::string_view s, size_t i);
// Offset of the first byte that does not start a valid UTF-8 sequence, or npos.
size_t first_invalid_byte(std::string_view s);
void append_utf8(std::string& out, char32_t cp);
// Decodes the valid sequence at s[i] (see valid_sequence_length).
char32_t decode_at(std::string_view s, size_t i, size_t len);
// Whole strings: bytes that are not valid UTF-8 become U+FFFD, as Python's errors="replace".
std::u32string to_utf32(std::string_view s);
std::string to_utf8(std::u32string_view s);

enum class NormalForm { NFC, NFD, NFKC, NFKD };
std::string normalize(std::string_view s, NormalForm form);  // s must be valid UTF-8
std::string lowercase(std::string_view s);

// Character classes as Python's str methods and re module see them (the LV-Eval metric is Python):
// str.split() splits on is_python_space; re's \w on str matches is_python_word_char (letters,
// numbers, underscore).
bool is_python_space(char32_t cp);
bool is_python_word_char(char32_t cp);

// GPT-2's map: bytes 33..126, 161..172 and 174..255 stand for themselves, the other 68 bytes
// for U+0100 onwards, so that every byte is a printable character.
const std::string& byte_to_char(uint8_t byte);  // the character, UTF-8 encoded
int char_to_byte(char32_t cp);                  // the byte, or -1 when cp is not in the map

}  // namespace crossmoe::unicode
