/*
 * Written for mlcpatch (Apache-2.0): the apache-tvm wheel ships the web runtime sources but not
 * this header, which they include. It provides the byte-stream interface the runtime serializes
 * through; the typed Read/Write entry points defer to Serializer<T> (tvm/support/serializer.h),
 * so the byte layout lives in one place.
 */
#ifndef MLCPATCH_TVM_SUPPORT_IO_H_
#define MLCPATCH_TVM_SUPPORT_IO_H_

#include <tvm/ffi/endian.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace tvm {
namespace support {

template <typename T>
struct Serializer;

/*! \brief A sequential byte source and/or sink. */
class Stream {
 public:
  virtual ~Stream() = default;
  /*! \return the number of bytes actually read (0 at the end of the data). */
  virtual size_t Read(void* ptr, size_t size) = 0;
  /*! \return the number of bytes written. */
  virtual size_t Write(const void* ptr, size_t size) = 0;

  template <typename T>
  void Write(const T& value) {
    Serializer<T>::Write(this, value);
  }

  template <typename T>
  bool Read(T* out) {
    return Serializer<T>::Read(this, out);
  }

  // Arrays of numbers are one block when the wire order is the host order (every wasm32 and
  // x86 host): element-wise calls would cost a virtual call per byte of an RPC copy.
  template <typename T>
  void WriteArray(const T* data, size_t count) {
    if constexpr (kBlockCopy<T>) {
      Write(static_cast<const void*>(data), sizeof(T) * count);
    } else {
      for (size_t i = 0; i < count; ++i) Write(data[i]);
    }
  }

  template <typename T>
  bool ReadArray(T* data, size_t count) {
    if constexpr (kBlockCopy<T>) {
      return Read(static_cast<void*>(data), sizeof(T) * count) == sizeof(T) * count;
    } else {
      for (size_t i = 0; i < count; ++i) {
        if (!Read(data + i)) return false;
      }
      return true;
    }
  }

 private:
  template <typename T>
  static constexpr bool kBlockCopy = std::is_arithmetic_v<T> && TVM_FFI_IO_NO_ENDIAN_SWAP;
};

}  // namespace support
}  // namespace tvm

#endif  // MLCPATCH_TVM_SUPPORT_IO_H_
