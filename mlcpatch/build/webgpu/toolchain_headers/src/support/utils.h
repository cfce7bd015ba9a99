/*
 * Written for mlcpatch (Apache-2.0): the apache-tvm wheel lacks this header. Small string and
 * environment helpers used by the runtime sources the web build compiles.
 */
#ifndef MLCPATCH_TVM_SRC_SUPPORT_UTILS_H_
#define MLCPATCH_TVM_SRC_SUPPORT_UTILS_H_

#include <tvm/ffi/string.h>

#include <cstdlib>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace tvm {
namespace support {

inline bool StartsWith(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && text.compare(0, prefix.size(), prefix) == 0;
}

inline bool EndsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ffi::String has no implicit conversion to string_view, and error messages arrive as one. A
// template, so a string literal still picks the string_view overload instead of being ambiguous.
template <typename S, typename = std::enable_if_t<std::is_same_v<S, ffi::String>>>
inline bool StartsWith(const S& text, std::string_view prefix) {
  return StartsWith(std::string_view(text.data(), text.size()), prefix);
}

template <typename S, typename = std::enable_if_t<std::is_same_v<S, ffi::String>>>
inline bool EndsWith(const S& text, std::string_view suffix) {
  return EndsWith(std::string_view(text.data(), text.size()), suffix);
}

inline std::vector<std::string> Split(std::string_view text, char delim) {
  std::vector<std::string> parts;
  size_t begin = 0;
  while (true) {
    size_t end = text.find(delim, begin);
    parts.emplace_back(text.substr(begin, end - begin));
    if (end == std::string_view::npos) break;
    begin = end + 1;
  }
  return parts;
}

/*! \brief An integer environment variable, or `fallback` when unset or not a number. */
inline int GetEnv(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  long parsed = std::strtol(value, &end, 10);
  return *end == '\0' ? static_cast<int>(parsed) : fallback;
}

inline std::string GetEnv(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value == nullptr ? fallback : std::string(value);
}

inline bool BoolEnv(const char* name, bool fallback = false) {
  const char* value = std::getenv(name);
  if (value == nullptr) return fallback;
  std::string_view v(value);
  return !(v.empty() || v == "0" || v == "false" || v == "False" || v == "OFF" || v == "off");
}

/*! \brief Mixes `value`'s hash into `seed` (boost-style constant). */
inline size_t HashCombine(size_t seed, size_t value) {
  return seed ^ (value + 0x9e3779b9 + (seed << 6) + (seed >> 2));
}

}  // namespace support
}  // namespace tvm

#endif  // MLCPATCH_TVM_SRC_SUPPORT_UTILS_H_
