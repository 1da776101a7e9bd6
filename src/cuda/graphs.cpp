// sdgen's CUDA shim: what tch does not bind from libtorch's CUDA side (CUDA graphs, fp16
// accumulation in cuBLAS GEMMs), behind a small C ABI.
//
// Built by build.rs as a shared library that the Rust side loads with dlopen only when a
// model runs on CUDA, so that a CPU-only install (libtorch_cuda.so present, its CUDA
// libraries absent) never has to resolve these symbols. Tensors arrive as `at::Tensor*`,
// which is what tch's `Tensor::as_ptr` gives. Every entry point catches C++ exceptions and
// returns non-zero, leaving the message for `sdgen_cuda_last_error`.

#include <ATen/Context.h>
#include <ATen/cuda/CUDAGraph.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <exception>
#include <optional>
#include <set>
#include <string>

namespace {

thread_local std::string last_error;

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    last_error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

// One graph, the side stream it is warmed up and captured on (never the legacy default
// stream, which cannot be captured), and the guard that makes that stream current meanwhile.
struct Graph {
  at::cuda::CUDAGraph graph;
  c10::DeviceIndex device;
  c10::cuda::CUDAStream stream;
  std::optional<c10::cuda::CUDAStreamGuard> on_stream;
  explicit Graph(c10::DeviceIndex d)
      : graph(), device(d), stream(c10::cuda::getStreamFromPool(false, d)) {}
};

}  // namespace

extern "C" {

// Bumped when an entry point changes; the Rust loader refuses another version.
int sdgen_cuda_shim_version() { return 3; }

const char* sdgen_cuda_last_error() { return last_error.c_str(); }

// Whether libtorch sees a CUDA device (loads the CUDA runtime; the loader's first check).
int sdgen_cuda_device_count(int* count) {
  return guarded([&] { *count = static_cast<int>(c10::cuda::device_count()); });
}

int sdgen_cuda_graph_new(int device, void** out) {
  return guarded([&] {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    *out = new Graph(static_cast<c10::DeviceIndex>(device));
  });
}

void sdgen_cuda_graph_free(void* g) { delete static_cast<Graph*>(g); }

// Makes the graph's side stream current, after the work queued so far: the warm-up call
// runs there, so that what libtorch sets up lazily per stream (cuBLAS workspaces, cuDNN
// plans) exists before the capture on that same stream.
int sdgen_cuda_graph_warmup_begin(void* g) {
  auto* graph = static_cast<Graph*>(g);
  return guarded([&] {
    c10::cuda::CUDAGuard guard(graph->device);
    c10::cuda::device_synchronize();
    graph->on_stream.emplace(graph->stream);
  });
}

// Waits for the warm-up and restores the previous stream.
int sdgen_cuda_graph_warmup_end(void* g) {
  auto* graph = static_cast<Graph*>(g);
  int rc = guarded([&] { graph->stream.synchronize(); });
  graph->on_stream.reset();
  return rc;
}

// Begins capturing on the side stream into the graph's own memory pool. Capture mode
// "thread local": an unsafe call from this thread ends the capture with an error; other
// threads (a VRAM sampler, a server's I/O) are not affected.
int sdgen_cuda_graph_begin(void* g) {
  auto* graph = static_cast<Graph*>(g);
  return guarded([&] {
    c10::cuda::CUDAGuard guard(graph->device);
    c10::cuda::device_synchronize();
    graph->on_stream.emplace(graph->stream);
    try {
      graph->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    } catch (...) {
      graph->on_stream.reset();
      throw;
    }
  });
}

// Ends the capture and instantiates the graph; restores the previous stream either way.
int sdgen_cuda_graph_end(void* g) {
  auto* graph = static_cast<Graph*>(g);
  int rc = guarded([&] { graph->graph.capture_end(); });
  graph->on_stream.reset();
  if (rc == 0) {
    rc = guarded([&] { c10::cuda::device_synchronize(); });
  }
  return rc;
}

// Abandons a capture whose forward failed: ends it (ignoring the invalidated capture's
// error), restores the stream and clears any error the failed capture left behind.
void sdgen_cuda_graph_abort(void* g) {
  auto* graph = static_cast<Graph*>(g);
  std::string kept = last_error;
  guarded([&] { graph->graph.capture_end(); });
  graph->on_stream.reset();
  guarded([&] { graph->graph.reset(); });
  (void)cudaGetLastError();
  last_error = kept;
}

// Replays the graph on the current stream's device (the stream it reads the inputs from
// is the current one; replay orders itself after it).
int sdgen_cuda_graph_replay(void* g) {
  auto* graph = static_cast<Graph*>(g);
  return guarded([&] {
    c10::cuda::CUDAGuard guard(graph->device);
    graph->graph.replay();
  });
}

// fp16 GEMMs accumulating in fp16 in cuBLAS (`torch.backends.cuda.matmul.
// allow_fp16_accumulation`, off by default). A libtorch process-wide flag read when a GEMM is
// launched; the Rust side sets it around a UNet call and puts the previous value back.
int sdgen_cuda_fp16_accumulation(int* on) {
  return guarded([&] { *on = at::globalContext().allowFP16AccumulationCuBLAS() ? 1 : 0; });
}

int sdgen_cuda_set_fp16_accumulation(int on) {
  return guarded([&] { at::globalContext().setAllowFP16AccumulationCuBLAS(on != 0); });
}

// libtorch's Kineto profiler over CPU ops and CUDA kernels, as `torch.profiler.profile`
// records them: started and stopped around a run, the trace written as Chrome JSON, for a
// per-op profile (tools/gpu_check.sh summarises it). The replays of a CUDA graph show as
// their kernels.
int sdgen_profile_start() {
  return guarded([&] {
    using torch::profiler::impl::ActivityType;
    torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
    std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
  });
}

int sdgen_profile_stop(const char* path) {
  return guarded([&] {
    auto result = torch::autograd::profiler::disableProfiler();
    if (path != nullptr && result) {
      result->save(path);
    }
  });
}

}  // extern "C"
