/*
 * Written for mlcpatch (Apache-2.0): the apache-tvm wheel lacks this header. Base64 streams for
 * tensors embedded in JSON; the codec itself is tvm-ffi's (tvm/ffi/extra/base64.h), these
 * classes only buffer around it.
 */
#ifndef MLCPATCH_TVM_SRC_SUPPORT_BASE64_H_
#define MLCPATCH_TVM_SRC_SUPPORT_BASE64_H_

#include <tvm/ffi/extra/base64.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

/*! \brief Decodes all base64 text of an underlying stream, then serves the decoded bytes. */
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* source) : source_(source) {}

  /*! \brief Read and decode the source; call before the first Read. */
  void InitPosition() {
    std::string text;
    char buffer[4096];
    while (size_t n = source_->Read(buffer, sizeof(buffer))) text.append(buffer, n);
    // JSON writers may wrap or pad the text; the codec wants the bare alphabet.
    text.erase(std::remove_if(text.begin(), text.end(),
                              [](unsigned char c) { return std::isspace(c) || c == '"'; }),
               text.end());
    ffi::Bytes decoded = ffi::Base64Decode(ffi::String(text));
    decoded_.assign(decoded.data(), decoded.size());
    pos_ = 0;
  }

  size_t Read(void* ptr, size_t size) final {
    size_t n = std::min(size, decoded_.size() - pos_);
    if (n != 0) std::memcpy(ptr, decoded_.data() + pos_, n);
    pos_ += n;
    return n;
  }

  size_t Write(const void*, size_t) final { return 0; }

 private:
  Stream* source_;
  std::string decoded_;
  size_t pos_{0};
};

/*! \brief Buffers written bytes; Finish() writes their base64 text to the underlying stream. */
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* sink) : sink_(sink) {}

  size_t Write(const void* ptr, size_t size) final {
    pending_.append(static_cast<const char*>(ptr), size);
    return size;
  }

  size_t Read(void*, size_t) final { return 0; }

  void Finish() {
    ffi::String text = ffi::Base64Encode(ffi::Bytes(pending_));
    sink_->Write(static_cast<const void*>(text.data()), text.size());
    pending_.clear();
  }

 private:
  Stream* sink_;
  std::string pending_;
};

}  // namespace support
}  // namespace tvm

#endif  // MLCPATCH_TVM_SRC_SUPPORT_BASE64_H_
