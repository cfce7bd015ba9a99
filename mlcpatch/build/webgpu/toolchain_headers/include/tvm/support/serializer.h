/*
 * Written for mlcpatch (Apache-2.0): the apache-tvm wheel ships the web runtime sources but not
 * this header. The byte layout must equal what the compiler (libtvm in the wheel) writes into a
 * module, because the web runtime reads those bytes back:
 *   - numbers and other trivially copyable values: their bytes, little-endian;
 *   - strings: uint64 length, then the bytes;
 *   - sequences (std::vector, ffi::Array): uint64 count, then each element;
 *   - maps (std::map, std::unordered_map, ffi::Map): uint64 count, then key, value per entry;
 *   - pairs: first, then second.
 * The browser tests load compiler-written executables and WebGPU modules through this code.
 */
#ifndef MLCPATCH_TVM_SUPPORT_SERIALIZER_H_
#define MLCPATCH_TVM_SUPPORT_SERIALIZER_H_

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/endian.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tvm {
namespace support {

/*! \brief Plain values: the object's bytes (numbers byte-swapped on big-endian hosts). */
template <typename T>
struct Serializer {
  static constexpr bool enabled = std::is_trivially_copyable_v<T>;
  static_assert(enabled, "no Serializer specialization for this type");

  static void Write(Stream* strm, const T& value) {
    if constexpr (std::is_arithmetic_v<T> && !TVM_FFI_IO_NO_ENDIAN_SWAP) {
      T swapped = value;
      ffi::ByteSwap(&swapped, sizeof(T), 1);
      strm->Write(static_cast<const void*>(&swapped), sizeof(T));
    } else {
      strm->Write(static_cast<const void*>(&value), sizeof(T));
    }
  }

  static bool Read(Stream* strm, T* out) {
    if (strm->Read(static_cast<void*>(out), sizeof(T)) != sizeof(T)) return false;
    if constexpr (std::is_arithmetic_v<T> && !TVM_FFI_IO_NO_ENDIAN_SWAP) {
      ffi::ByteSwap(out, sizeof(T), 1);
    }
    return true;
  }
};

namespace detail {

inline void WriteCount(Stream* strm, size_t count) {
  Serializer<uint64_t>::Write(strm, static_cast<uint64_t>(count));
}

inline bool ReadCount(Stream* strm, size_t* count) {
  uint64_t value = 0;
  if (!Serializer<uint64_t>::Read(strm, &value)) return false;
  *count = static_cast<size_t>(value);
  return true;
}

inline void WriteBytes(Stream* strm, const char* data, size_t size) {
  WriteCount(strm, size);
  if (size != 0) strm->Write(static_cast<const void*>(data), size);
}

inline bool ReadBytes(Stream* strm, std::string* out) {
  size_t size = 0;
  if (!ReadCount(strm, &size)) return false;
  out->resize(size);
  return size == 0 || strm->Read(static_cast<void*>(out->data()), size) == size;
}

template <typename Map>
void WriteMap(Stream* strm, const Map& map) {
  WriteCount(strm, map.size());
  for (const auto& kv : map) {
    strm->Write(kv.first);
    strm->Write(kv.second);
  }
}

}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& value) {
    detail::WriteBytes(strm, value.data(), value.size());
  }
  static bool Read(Stream* strm, std::string* out) { return detail::ReadBytes(strm, out); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& value) {
    detail::WriteBytes(strm, value.data(), value.size());
  }
  static bool Read(Stream* strm, ffi::String* out) {
    std::string buffer;
    if (!detail::ReadBytes(strm, &buffer)) return false;
    *out = ffi::String(std::move(buffer));
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::pair<A, B>& value) {
    strm->Write(value.first);
    strm->Write(value.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* out) {
    return strm->Read(&out->first) && strm->Read(&out->second);
  }
};

template <typename T, typename Alloc>
struct Serializer<std::vector<T, Alloc>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::vector<T, Alloc>& value) {
    detail::WriteCount(strm, value.size());
    strm->WriteArray(value.data(), value.size());
  }
  static bool Read(Stream* strm, std::vector<T, Alloc>* out) {
    size_t count = 0;
    if (!detail::ReadCount(strm, &count)) return false;
    out->resize(count);
    return strm->ReadArray(out->data(), count);
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Array<T>& value) {
    detail::WriteCount(strm, value.size());
    for (const T& item : value) strm->Write(item);
  }
  static bool Read(Stream* strm, ffi::Array<T>* out) {
    size_t count = 0;
    if (!detail::ReadCount(strm, &count)) return false;
    ffi::Array<T> result;
    result.reserve(static_cast<int64_t>(count));
    for (size_t i = 0; i < count; ++i) {
      T item;
      if (!strm->Read(&item)) return false;
      result.push_back(std::move(item));
    }
    *out = std::move(result);
    return true;
  }
};

template <typename K, typename V, typename... Rest>
struct Serializer<std::map<K, V, Rest...>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::map<K, V, Rest...>& value) {
    detail::WriteMap(strm, value);
  }
  static bool Read(Stream* strm, std::map<K, V, Rest...>* out) {
    size_t count = 0;
    if (!detail::ReadCount(strm, &count)) return false;
    out->clear();
    for (size_t i = 0; i < count; ++i) {
      std::pair<K, V> kv;
      if (!strm->Read(&kv)) return false;
      out->insert(std::move(kv));
    }
    return true;
  }
};

template <typename K, typename V, typename... Rest>
struct Serializer<std::unordered_map<K, V, Rest...>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::unordered_map<K, V, Rest...>& value) {
    detail::WriteMap(strm, value);
  }
  static bool Read(Stream* strm, std::unordered_map<K, V, Rest...>* out) {
    size_t count = 0;
    if (!detail::ReadCount(strm, &count)) return false;
    out->clear();
    for (size_t i = 0; i < count; ++i) {
      std::pair<K, V> kv;
      if (!strm->Read(&kv)) return false;
      out->insert(std::move(kv));
    }
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Map<K, V>& value) {
    detail::WriteCount(strm, value.size());
    for (const auto& kv : value) {
      strm->Write(kv.first);
      strm->Write(kv.second);
    }
  }
  static bool Read(Stream* strm, ffi::Map<K, V>* out) {
    size_t count = 0;
    if (!detail::ReadCount(strm, &count)) return false;
    ffi::Map<K, V> result;
    for (size_t i = 0; i < count; ++i) {
      K key;
      V value;
      if (!strm->Read(&key) || !strm->Read(&value)) return false;
      result.Set(std::move(key), std::move(value));
    }
    *out = std::move(result);
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // MLCPATCH_TVM_SUPPORT_SERIALIZER_H_
