//! CUDA graphs for a fixed-shape call (the UNet step). The first call with a new set of input
//! shapes copies its inputs into static buffers, runs the call once to warm up (on the
//! capture's side stream), captures it into a graph that reads those buffers, and replays the
//! graph for its answer; later calls with the same shapes copy their inputs into the buffers
//! and replay: one launch instead of hundreds. The bookkeeping ([`GraphRunner`]) is generic
//! over [`Capture`], so the CPU tests run it with a fake that recomputes instead of replaying.
//!
//! A capture that fails (an op that syncs with the host, an allocation the capture refuses)
//! falls back to eager calls for that key, with one `log::warn!` per runner saying why. An
//! error of the call itself (bad conditioning, out of memory while warming up) is returned.

use super::shim::Shim;
use std::ffi::c_void;
use tch::{Device, Kind, Tensor};

/// What a graph is specialised to: the device and each input's shape and dtype.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GraphKey {
    device: Device,
    inputs: Vec<(Vec<i64>, Kind)>,
}

impl GraphKey {
    pub fn of(inputs: &[&Tensor]) -> GraphKey {
        GraphKey {
            device: inputs.first().map_or(Device::Cpu, |t| t.device()),
            inputs: inputs.iter().map(|t| (t.size(), t.kind())).collect(),
        }
    }
}

/// Why a capture gave no graph.
#[derive(Debug)]
pub enum CaptureFailure {
    /// The call failed on its own terms: returned as the call's error.
    Call(crate::Error),
    /// The call cannot be captured (or the capture machinery failed): run it eagerly.
    Capture(String),
}

/// Records a call into a graph and replays it.
pub trait Capture {
    type Graph;
    /// Warms `f` up once, then captures what it launches; returns the graph and `f`'s output
    /// tensor, which each replay overwrites. A libtorch panic inside the capture is a
    /// [`CaptureFailure::Capture`] and leaves the device as it was; a panic while warming up
    /// propagates (it is the call's failure, as it would be without graphs).
    fn capture(&self, f: &mut dyn FnMut() -> crate::Result<Tensor>) -> Result<(Self::Graph, Tensor), CaptureFailure>;
    /// Runs the graph again. `f` is the captured call, for implementations that cannot replay.
    fn replay(
        &self,
        graph: &Self::Graph,
        output: &Tensor,
        f: &mut dyn FnMut() -> crate::Result<Tensor>,
    ) -> crate::Result<()>;
}

/// How often the runner captured, replayed, or ran eagerly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GraphStats {
    pub captures: usize,
    pub replays: usize,
    /// Calls run without a graph: every call of a key whose capture failed.
    pub eager: usize,
    pub failures: usize,
}

enum Entry<G> {
    Ready { graph: G, inputs: Vec<Tensor>, output: Tensor },
    Failed,
}

/// Graphs by input shapes, least recently used first; at most `capacity` are kept, since
/// each holds its own memory pool.
pub struct GraphRunner<C: Capture> {
    capture: C,
    entries: Vec<(GraphKey, Entry<C::Graph>)>,
    capacity: usize,
    warned: bool,
    stats: GraphStats,
}

impl<C: Capture> GraphRunner<C> {
    pub fn new(capture: C, capacity: usize) -> Self {
        GraphRunner {
            capture,
            entries: Vec::new(),
            capacity: capacity.max(1),
            warned: false,
            stats: GraphStats::default(),
        }
    }

    pub fn stats(&self) -> GraphStats {
        self.stats
    }

    /// Keys with a captured graph, least recently used first.
    pub fn keys(&self) -> Vec<&GraphKey> {
        self.entries.iter().filter(|(_, e)| matches!(e, Entry::Ready { .. })).map(|(k, _)| k).collect()
    }

    /// Drops every graph (their memory pools with them): needed whenever a captured call's
    /// weights change (LoRAs), since graphs read the tensors they were captured with.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// `f(inputs)`, through a graph when one fits the inputs' shapes. `f` must depend only on
    /// its arguments and on tensors that do not change between calls, and must launch the
    /// same work for the same shapes.
    pub fn run(
        &mut self,
        inputs: &[&Tensor],
        f: &mut dyn FnMut(&[Tensor]) -> crate::Result<Tensor>,
    ) -> crate::Result<Tensor> {
        let key = GraphKey::of(inputs);
        if let Some(pos) = self.entries.iter().position(|(k, _)| *k == key) {
            let entry = self.entries.remove(pos);
            self.entries.push(entry);
            let (_, entry) = self.entries.last().expect("just pushed");
            return match entry {
                Entry::Ready { graph, inputs: buffers, output } => {
                    for (buf, x) in buffers.iter().zip(inputs) {
                        buf.shallow_clone()
                            .f_copy_(x)
                            .map_err(|e| crate::Error::Compute(format!("copying a graph input: {e}")))?;
                    }
                    self.capture.replay(graph, output, &mut || f(buffers))?;
                    self.stats.replays += 1;
                    // The next replay overwrites `output`; callers may keep what they get.
                    Ok(output.copy())
                }
                Entry::Failed => {
                    self.stats.eager += 1;
                    f(&inputs.iter().map(|t| t.shallow_clone()).collect::<Vec<_>>())
                }
            };
        }
        // New shapes: static buffers, then warm-up and capture on them, and a first replay.
        let buffers: Vec<Tensor> = inputs.iter().map(|t| t.copy()).collect();
        let (entry, answer) = match self.capture.capture(&mut || f(&buffers)) {
            Ok((graph, output)) => {
                self.stats.captures += 1;
                self.capture.replay(&graph, &output, &mut || f(&buffers))?;
                self.stats.replays += 1;
                let answer = output.copy();
                (Entry::Ready { graph, inputs: buffers, output }, answer)
            }
            Err(CaptureFailure::Call(e)) => return Err(e),
            Err(CaptureFailure::Capture(why)) => {
                self.stats.failures += 1;
                if !self.warned {
                    self.warned = true;
                    log::warn!("CUDA graph capture failed, running the UNet without graphs for these shapes: {why}");
                }
                drop(buffers);
                self.stats.eager += 1;
                let answer = f(&inputs.iter().map(|t| t.shallow_clone()).collect::<Vec<_>>())?;
                (Entry::Failed, answer)
            }
        };
        self.entries.push((key, entry));
        if self.entries.len() > self.capacity {
            self.entries.remove(0);
        }
        Ok(answer)
    }
}

/// A captured CUDA graph (`at::cuda::CUDAGraph` in the shim), freed on drop.
pub struct CudaGraph {
    ptr: *mut c_void,
    shim: &'static Shim,
}

// SAFETY: a CUDA graph is not tied to the thread that captured it; the runner that owns it
// is used from one thread at a time (`Pipeline` is `Send`, not `Sync`).
unsafe impl Send for CudaGraph {}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `graph_new` and is freed once.
        unsafe { (self.shim.graph_free)(self.ptr) }
    }
}

/// [`Capture`] on a CUDA device through the shim: capture on a side stream into the graph's
/// private memory pool, after a device synchronisation.
pub struct CudaCapture {
    shim: &'static Shim,
    device: usize,
}

impl CudaCapture {
    /// The capture backend for `device`, or why graphs cannot be used there.
    pub fn new(device: Device) -> Result<CudaCapture, String> {
        let Device::Cuda(n) = device else {
            return Err(format!("CUDA graphs need a CUDA device, not {device:?}"));
        };
        let shim = Shim::get()?;
        Ok(CudaCapture { shim, device: n })
    }
}

impl Capture for CudaCapture {
    type Graph = CudaGraph;

    fn capture(&self, f: &mut dyn FnMut() -> crate::Result<Tensor>) -> Result<(CudaGraph, Tensor), CaptureFailure> {
        let shim = self.shim;
        let failed = |what: &str, rc| shim.check(rc, what).map_err(CaptureFailure::Capture);
        let mut ptr = std::ptr::null_mut();
        // SAFETY: `ptr` is a valid out-pointer; the device index is one tch resolved.
        failed("creating a CUDA graph", unsafe { (shim.graph_new)(self.device as i32, &mut ptr) })?;
        let graph = CudaGraph { ptr, shim };

        // Warm-up on the capture's stream; the stream is restored even if the call panics.
        struct OnStream<'a>(&'a CudaGraph);
        impl Drop for OnStream<'_> {
            fn drop(&mut self) {
                // SAFETY: a graph whose warm-up began.
                unsafe { (self.0.shim.graph_warmup_end)(self.0.ptr) };
            }
        }
        // SAFETY: a live graph from `graph_new`.
        failed("warming up on the capture stream", unsafe { (shim.graph_warmup_begin)(graph.ptr) })?;
        {
            let _restore = OnStream(&graph);
            drop(f().map_err(CaptureFailure::Call)?);
        }

        // SAFETY: a live graph, not capturing.
        failed("beginning the capture", unsafe { (shim.graph_begin)(graph.ptr) })?;
        // libtorch reports a refused operation by throwing, which tch turns into a panic; the
        // capture must be ended whatever happens inside.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let output = match outcome {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                // SAFETY: a graph whose capture began.
                unsafe { (shim.graph_abort)(graph.ptr) };
                return Err(CaptureFailure::Call(e));
            }
            Err(payload) => {
                // SAFETY: as above.
                unsafe { (shim.graph_abort)(graph.ptr) };
                let text = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Err(CaptureFailure::Capture(
                    text.lines().next().unwrap_or("libtorch failed during the capture").to_string(),
                ));
            }
        };
        // SAFETY: a graph whose capture began and whose call returned.
        failed("ending the capture", unsafe { (shim.graph_end)(graph.ptr) })?;
        Ok((graph, output))
    }

    fn replay(&self, graph: &CudaGraph, _: &Tensor, _: &mut dyn FnMut() -> crate::Result<Tensor>) -> crate::Result<()> {
        // SAFETY: a graph whose capture ended successfully.
        self.shim
            .check(unsafe { (self.shim.graph_replay)(graph.ptr) }, "replaying the CUDA graph")
            .map_err(crate::Error::Compute)
    }
}

/// A CPU stand-in for [`CudaCapture`], for tests here and in the pipeline.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::cell::Cell;

    /// A CPU stand-in: "capturing" runs the call once for its output tensor, "replaying" runs
    /// it again on the static buffers and writes into that same tensor, as a replay does.
    /// It can be told to fail its captures.
    pub(crate) struct Fake {
        pub fail: bool,
        pub captured: Cell<usize>,
    }

    impl Capture for Fake {
        type Graph = ();
        fn capture(&self, f: &mut dyn FnMut() -> crate::Result<Tensor>) -> Result<((), Tensor), CaptureFailure> {
            drop(f().map_err(CaptureFailure::Call)?); // the warm-up
            if self.fail {
                return Err(CaptureFailure::Capture("capture refused by the fake".into()));
            }
            self.captured.set(self.captured.get() + 1);
            Ok(((), f().map_err(CaptureFailure::Call)?))
        }
        fn replay(&self, _: &(), output: &Tensor, f: &mut dyn FnMut() -> crate::Result<Tensor>) -> crate::Result<()> {
            output.shallow_clone().copy_(&f()?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Fake;
    use super::*;
    use std::cell::Cell;

    fn step(inputs: &[Tensor]) -> crate::Result<Tensor> {
        Ok(&inputs[0] * 2.0 + &inputs[1])
    }

    #[test]
    fn replays_read_the_new_inputs_and_outputs_are_not_overwritten() {
        let mut r = GraphRunner::new(Fake { fail: false, captured: Cell::new(0) }, 4);
        let t = Tensor::from_slice(&[1.0f32]);
        let mut kept = Vec::new();
        for i in 0..4 {
            let x = Tensor::full([2, 3], i as f64, (Kind::Float, Device::Cpu));
            kept.push(r.run(&[&x, &t], &mut step).unwrap());
        }
        for (i, out) in kept.iter().enumerate() {
            // Exact: one multiply and one add of small integers.
            assert_eq!(out.max().double_value(&[]), 2.0 * i as f64 + 1.0, "call {i}");
            assert_eq!(out.min().double_value(&[]), 2.0 * i as f64 + 1.0, "call {i}");
        }
        assert_eq!(r.stats(), GraphStats { captures: 1, replays: 4, eager: 0, failures: 0 });
    }

    #[test]
    fn one_graph_per_shape_dtype_and_conditioning_length() {
        let mut r = GraphRunner::new(Fake { fail: false, captured: Cell::new(0) }, 8);
        let t = Tensor::from_slice(&[1.0f32]);
        let x = |b: i64, n: i64, k: Kind| Tensor::ones([b, n], (k, Device::Cpu));
        for _ in 0..2 {
            for (b, n, k) in [(1, 77, Kind::Float), (2, 77, Kind::Float), (2, 154, Kind::Float), (2, 77, Kind::Double)]
            {
                let _ = r.run(&[&x(b, n, k), &t], &mut step).unwrap();
            }
        }
        assert_eq!(r.keys().len(), 4);
        assert_eq!(r.stats(), GraphStats { captures: 4, replays: 8, eager: 0, failures: 0 });
        r.clear();
        assert!(r.keys().is_empty());
        let _ = r.run(&[&x(1, 77, Kind::Float), &t], &mut step).unwrap();
        assert_eq!(r.stats().captures, 5);
    }

    #[test]
    fn least_recently_used_graph_goes_first() {
        let mut r = GraphRunner::new(Fake { fail: false, captured: Cell::new(0) }, 2);
        let t = Tensor::from_slice(&[1.0f32]);
        let x = |n: i64| Tensor::ones([n], (Kind::Float, Device::Cpu));
        let _ = r.run(&[&x(1), &t], &mut step).unwrap();
        let _ = r.run(&[&x(2), &t], &mut step).unwrap();
        let _ = r.run(&[&x(1), &t], &mut step).unwrap(); // 1 is now the most recent
        let _ = r.run(&[&x(3), &t], &mut step).unwrap(); // evicts 2
        let sizes: Vec<i64> = r.keys().iter().map(|k| k.inputs[0].0[0]).collect();
        assert_eq!(sizes, [1, 3]);
        let _ = r.run(&[&x(2), &t], &mut step).unwrap();
        assert_eq!(r.stats().captures, 4);
    }

    #[test]
    fn a_failed_capture_falls_back_to_eager_for_good() {
        let mut r = GraphRunner::new(Fake { fail: true, captured: Cell::new(0) }, 4);
        let t = Tensor::from_slice(&[0.5f32]);
        for i in 0..3 {
            let x = Tensor::full([4], i as f64, (Kind::Float, Device::Cpu));
            let out = r.run(&[&x, &t], &mut step).unwrap();
            assert_eq!(out.max().double_value(&[]), 2.0 * i as f64 + 0.5);
        }
        assert_eq!(r.stats(), GraphStats { captures: 0, replays: 0, eager: 3, failures: 1 });
        assert!(r.keys().is_empty());
    }

    #[test]
    fn an_error_in_the_call_is_returned_and_nothing_is_kept() {
        let mut r = GraphRunner::new(Fake { fail: false, captured: Cell::new(0) }, 4);
        let x = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let err = r.run(&[&x], &mut |_| Err(crate::Error::invalid("bad conditioning"))).unwrap_err();
        assert!(err.to_string().contains("bad conditioning"));
        assert!(r.keys().is_empty() && r.stats().captures == 0);
    }

    #[test]
    fn cuda_capture_needs_a_cuda_device() {
        let e = CudaCapture::new(Device::Cpu).err().unwrap();
        assert!(e.contains("CUDA device"), "{e}");
    }
}
