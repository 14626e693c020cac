//! Graphs: the device work of one closure, captured once and replayed many times
//! ([`super::Device::capture`], [`Graph::launch`]), e.g. a whole training step launched with one
//! call instead of hundreds of kernel launches.
//!
//! - cuda: CUDA stream capture of the device's one stream (`cuStreamBeginCapture` in thread-local
//!   mode, `cuStreamEndCapture`, `cuGraphInstantiate`), replayed with `cuGraphLaunch` on the same
//!   stream. The cuBLAS and cuBLASLt handles (and the workspaces they own) are created before the
//!   capture begins, so captured GEMMs neither allocate nor synchronize.
//! - emu: every op the closure submits (kernel launch, memset, device copy, GEMM) is recorded
//!   with its arguments by value instead of run, and replayed in order on the emulator (strict
//!   mode checks each replayed launch against the views it was captured with).
//!
//! A graph holds addresses and scalar arguments by value, exactly like a CUDA graph: replaying it
//! on new data means writing the new values into the same buffers first. Work that is not stream
//! work is an error inside a capture on both devices (allocation, host copies, synchronize,
//! timing, nested captures), and an error or panic inside the closure ends the capture and
//! discards it, leaving the device usable.

use std::sync::Mutex;

use anyhow::{anyhow, Result};

use super::{emu, Device, Inner};

/// A captured sequence of device work (see the module docs). Launch it with [`Graph::launch`].
pub struct Graph {
    dev: Device,
    exec: Exec,
}

enum Exec {
    /// `None`: nothing was captured (an empty closure).
    Cuda(Option<CudaExec>),
    Emu(Vec<emu::EmuOp>),
}

/// An instantiated CUDA graph. cudarc's handle holds raw pointers (neither `Send` nor `Sync`);
/// CUDA allows a graph exec to be launched from any thread as long as calls on it are
/// serialized, which the mutex does.
struct CudaExec(Mutex<cudarc::driver::CudaGraph>);

// SAFETY: see CudaExec: every use goes through the mutex, one thread at a time.
unsafe impl Send for CudaExec {}
// SAFETY: as above.
unsafe impl Sync for CudaExec {}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.exec {
            Exec::Cuda(_) => write!(f, "Graph(cuda, on {:?})", self.dev),
            Exec::Emu(ops) => write!(f, "Graph(emu, {} ops, on {:?})", ops.len(), self.dev),
        }
    }
}

/// Ends a capture when dropped before [`CaptureGuard::finish`] (the closure panicked), so that
/// the device does not stay in capture mode.
struct CaptureGuard<'a> {
    dev: &'a Device,
    done: bool,
}

impl Drop for CaptureGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            match &self.dev.inner {
                Inner::Cuda(d) => drop(d.end_capture()),
                Inner::Emu(d) => drop(d.end_capture()),
            }
        }
    }
}

pub(super) fn capture(dev: &Device, f: impl FnOnce() -> Result<()>) -> Result<Graph> {
    match &dev.inner {
        Inner::Cuda(d) => d.begin_capture()?,
        Inner::Emu(d) => d.begin_capture()?,
    }
    let mut guard = CaptureGuard { dev, done: false };
    let result = f();
    guard.done = true;
    let exec = match &dev.inner {
        Inner::Cuda(d) => {
            // always end the capture (the stream cannot be used otherwise), then report the
            // closure's error first: it is the cause when capture was invalidated
            let graph = d.end_capture();
            result.map_err(|e| e.context("inside Device::capture"))?;
            Exec::Cuda(graph?.map(|g| CudaExec(Mutex::new(g))))
        }
        Inner::Emu(d) => {
            let ops = d.end_capture();
            result.map_err(|e| e.context("inside Device::capture"))?;
            Exec::Emu(ops)
        }
    };
    Ok(Graph {
        dev: dev.clone(),
        exec,
    })
}

impl Graph {
    /// Replays the captured work on its device's stream, in order (asynchronously on cuda, like a
    /// kernel launch: read the results with a download or after `synchronize`). Launched inside
    /// another capture, its work becomes part of that graph.
    ///
    /// # Safety
    /// Every buffer the captured work touched must still be alive (a graph holds raw addresses),
    /// and no host code may read or write them until the replay completes. Kernel arguments were
    /// checked at capture time; their values (sizes, scalars such as AdamW's step) are replayed
    /// unchanged.
    pub unsafe fn launch(&self) -> Result<()> {
        match (&self.exec, &self.dev.inner) {
            (Exec::Cuda(None), _) => Ok(()),
            (Exec::Cuda(Some(g)), Inner::Cuda(d)) => {
                let g =
                    g.0.lock()
                        .map_err(|_| anyhow!("Graph::launch: graph lock poisoned"))?;
                d.launch_graph(&g)
            }
            (Exec::Emu(ops), Inner::Emu(d)) => {
                for op in ops {
                    d.submit(op.clone())?;
                }
                Ok(())
            }
            _ => Err(anyhow!("Graph::launch: graph and device kinds differ")),
        }
    }

    /// The device the graph was captured on (and replays on).
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// How many ops were recorded (emu; `None` on cuda, where the driver keeps the nodes).
    pub fn recorded_ops(&self) -> Option<usize> {
        match &self.exec {
            Exec::Cuda(_) => None,
            Exec::Emu(ops) => Some(ops.len()),
        }
    }
}

// Graphs live next to the model's buffers in structs shared across threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Graph>();
};
