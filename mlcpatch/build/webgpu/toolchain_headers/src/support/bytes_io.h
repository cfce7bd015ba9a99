/*
 * Written for mlcpatch (Apache-2.0): the apache-tvm wheel lacks this header. Streams over bytes
 * held in memory, used to load executables, parameter blobs and device modules.
 */
#ifndef MLCPATCH_TVM_SRC_SUPPORT_BYTES_IO_H_
#define MLCPATCH_TVM_SRC_SUPPORT_BYTES_IO_H_

#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

/*! \brief Reads a byte buffer it does not own: the buffer must outlive the stream. */
class BytesInStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  BytesInStream(const char* data, size_t size) : data_(data), size_(size) {}
  explicit BytesInStream(const std::string& bytes) : BytesInStream(bytes.data(), bytes.size()) {}
  explicit BytesInStream(const ffi::Bytes& bytes) : BytesInStream(bytes.data(), bytes.size()) {}

  size_t Read(void* ptr, size_t size) final {
    size_t n = std::min(size, size_ - pos_);
    if (n != 0) std::memcpy(ptr, data_ + pos_, n);
    pos_ += n;
    return n;
  }

  size_t Write(const void*, size_t) final { return 0; }  // read-only

  size_t Tell() const { return pos_; }
  void Seek(size_t pos) { pos_ = std::min(pos, size_); }

 private:
  const char* data_;
  size_t size_;
  size_t pos_{0};
};

/*! \brief Appends to a std::string it does not own. */
class BytesOutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit BytesOutStream(std::string* out) : out_(out) {}

  size_t Write(const void* ptr, size_t size) final {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }

  size_t Read(void*, size_t) final { return 0; }  // write-only

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm

#endif  // MLCPATCH_TVM_SRC_SUPPORT_BYTES_IO_H_
