/*
 * Written for mlcpatch (Apache-2.0): the apache-tvm wheel lacks this header. NVTX ranges only
 * annotate CUDA profiles; the web runtime has no profiler to feed, so a range does nothing.
 */
#ifndef MLCPATCH_TVM_SUPPORT_CUDA_NVTX_H_
#define MLCPATCH_TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

namespace tvm {
namespace support {

class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};

}  // namespace support
}  // namespace tvm

#endif  // MLCPATCH_TVM_SUPPORT_CUDA_NVTX_H_
