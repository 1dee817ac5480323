// clq's native kernel for XLA's CPU backend: the weight gradient of a KxK depthwise convolution (TF 'SAME'
// padding, NHWC, float32) in one pass over the input and the output gradient.
//
// XLA computes it as K*K elementwise products, each written to memory by a loop fusion and summed by a separate
// reduction: 2*K*K passes over [B*H'*W', C] where this kernel makes one (clq/model/native.py says how it is
// built, loaded and used; docs/performance.md what it saves).
//
// Determinism: the batch is cut into a fixed number of parts (the `parts` attribute, not the thread count); each
// part sums its images in a fixed order and the parts are added in index order, so the result does not depend
// on how many threads run the parts.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t batch, height, width, channels;  // x: [batch, height, width, channels]
  int64_t out_height, out_width;           // g: [batch, out_height, out_width, channels]
  int64_t kernel, stride, pad_top, pad_left;
};

// acc[(kh*K + kw)*C + c] = sum over images b0..b1-1 and output pixels (oh, ow) of
// x[b, oh*s + kh - pad_top, ow*s + kw - pad_left, c] * g[b, oh, ow, c] (taps on the zero padding add nothing).
void PartialWeightGrad(const Geometry& q, const float* x, const float* g, float* acc, int64_t b0, int64_t b1) {
  const int64_t C = q.channels, K = q.kernel;
  std::fill(acc, acc + K * K * C, 0.0f);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t oh = 0; oh < q.out_height; ++oh) {
      const float* g_row = g + ((b * q.out_height + oh) * q.out_width) * C;
      for (int64_t kh = 0; kh < K; ++kh) {
        const int64_t ih = oh * q.stride + kh - q.pad_top;
        if (ih < 0 || ih >= q.height) continue;
        const float* x_row = x + ((b * q.height + ih) * q.width) * C;
        for (int64_t kw = 0; kw < K; ++kw) {
          float* __restrict a = acc + (kh * K + kw) * C;
          for (int64_t ow = 0; ow < q.out_width; ++ow) {
            const int64_t iw = ow * q.stride + kw - q.pad_left;
            if (iw < 0 || iw >= q.width) continue;
            const float* __restrict xp = x_row + iw * C;
            const float* __restrict gp = g_row + ow * C;
            for (int64_t c = 0; c < C; ++c) a[c] += xp[c] * gp[c];
          }
        }
      }
    }
  }
}

// Work shared by the calling thread and the helpers it schedules: each takes the next unstarted part, so the
// caller never waits for a part that no thread has begun (no deadlock when the pool's threads are busy).
struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable all_done;
};

ffi::Error DepthwiseWeightGrad(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer g,
                               ffi::Result<ffi::AnyBuffer> dw, int64_t stride, int64_t pad_top, int64_t pad_left,
                               int64_t parts) {
  const auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  const size_t rank = xd.size();
  if (rank < 4 || gd.size() != rank || wd.size() != rank || x.element_type() != ffi::DataType::F32 ||
      g.element_type() != ffi::DataType::F32 || dw->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("clq_depthwise_weight_grad: x, g, dw must be float32 [..., B, H, W, C]");
  int64_t members = 1;  // leading (vmapped) dimensions: independent problems
  for (size_t i = 0; i + 4 < rank; ++i) members *= xd[i];
  const Geometry q{xd[rank - 4], xd[rank - 3], xd[rank - 2], xd[rank - 1], gd[rank - 3], gd[rank - 2],
                   wd[rank - 4], stride, pad_top, pad_left};
  const int64_t per_part = q.kernel * q.kernel * q.channels;
  const int64_t n_parts = std::max<int64_t>(1, std::min<int64_t>(parts, q.batch));
  const int64_t n_tasks = members * n_parts;
  std::vector<float> partial(n_tasks * per_part);
  const float* xs = x.typed_data<float>();
  const float* gs = g.typed_data<float>();
  float* ps = partial.data();
  const int64_t x_size = q.batch * q.height * q.width * q.channels;
  const int64_t g_size = q.batch * q.out_height * q.out_width * q.channels;

  auto progress = std::make_shared<Progress>();
  auto work = [=](Progress* p) {
    for (int64_t t; (t = p->next.fetch_add(1)) < n_tasks;) {
      const int64_t m = t / n_parts, i = t % n_parts;
      PartialWeightGrad(q, xs + m * x_size, gs + m * g_size, ps + t * per_part, q.batch * i / n_parts,
                        q.batch * (i + 1) / n_parts);
      if (p->done.fetch_add(1) + 1 == n_tasks) {
        std::lock_guard<std::mutex> lock(p->mu);
        p->all_done.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(n_tasks - 1, std::max<int64_t>(0, pool.num_threads() - 1));
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([progress, work]() { work(progress.get()); });
  work(progress.get());
  {
    std::unique_lock<std::mutex> lock(progress->mu);
    progress->all_done.wait(lock, [&] { return progress->done.load() == n_tasks; });
  }
  float* out = dw->typed_data<float>();
  for (int64_t m = 0; m < members; ++m) {
    const float* first = ps + m * n_parts * per_part;
    float* o = out + m * per_part;
    std::memcpy(o, first, per_part * sizeof(float));
    for (int64_t i = 1; i < n_parts; ++i)
      for (int64_t j = 0; j < per_part; ++j) o[j] += first[i * per_part + j];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ClqDepthwiseWeightGrad, DepthwiseWeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("parts"));
