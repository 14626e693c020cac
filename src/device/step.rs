//! Step scalars: the few kernel arguments of a training step that change from one step to the
//! next (dropout's step, AdamW's step- and lr-dependent factors, the LM head's 1/n), kept in one
//! small device buffer so that a captured step graph ([`super::Device::capture`]) reads each
//! replay's values instead of the values it was captured with.
//!
//! - [`Device::set_step_scalars`] writes them (a host copy: never inside a capture).
//! - Outside a capture, launchers pass NULL for the pointer and the value by argument, as before:
//!   plain launches never depend on this buffer.
//! - Inside a capture, [`Device::step_arg`] hands the launcher the address of its slot after
//!   checking that the slot holds exactly the value the launcher would have passed (bitwise), so
//!   the captured work computes what plain launches compute; a value that was not set first is an
//!   error, not a silently stale graph.
//!
//! Device layout (byte offsets, read by `kernels/dropout.cu`, `attention.cu`, `adamw.cu` and
//! `classifier.cu` through their `step_at` / `dscale_at` arguments):
//! `0: u64 dropout step | 8: f32 x 8 AdamW (beta1, 1-beta1, beta2, 1-beta2, bias_correction2_sqrt,
//! eps, neg_step_size, decay) | 40: f32 cross-entropy dscale`.

use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};

use super::{DevPtr, Device, DeviceBuffer, KernelArg};

/// The values of one training step that its kernels read from device memory inside a graph.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepScalars {
    /// The optimizer step that selects dropout masks (`DropoutSite::step`).
    pub dropout_step: u64,
    /// AdamW's eight per-step factors, as `kernels::adamw` passes them by value.
    pub adamw: [f32; 8],
    /// The cross-entropy gradient scale (1 / the batch's target count).
    pub dscale: f32,
}

/// One slot of [`StepScalars`], with the value a launcher is about to use.
#[derive(Clone, Copy, Debug)]
pub enum StepSlot {
    DropoutStep(u64),
    AdamW([f32; 8]),
    DScale(f32),
}

/// 32-bit words of the device buffer (48 bytes: 44 used).
const WORDS: usize = 12;
/// Word ranges of the slots.
const DROPOUT_WORDS: std::ops::Range<usize> = 0..2;
const ADAMW_WORDS: std::ops::Range<usize> = 2..10;
const DSCALE_WORDS: std::ops::Range<usize> = 10..11;

/// A device's step scalar buffer and the values last written into it.
#[derive(Default)]
pub(super) struct StepState {
    buf: Option<DeviceBuffer<i32>>,
    now: Option<StepScalars>,
}

pub(super) type SharedStepState = std::sync::Arc<Mutex<StepState>>;

fn words(s: &StepScalars) -> [i32; WORDS] {
    let mut w = [0i32; WORDS];
    w[0] = s.dropout_step as u32 as i32;
    w[1] = (s.dropout_step >> 32) as u32 as i32;
    for (k, x) in s.adamw.iter().enumerate() {
        w[2 + k] = x.to_bits() as i32;
    }
    w[10] = s.dscale.to_bits() as i32;
    w
}

impl Device {
    /// Makes `s` the step scalars that captured work reads when it runs (see the module docs).
    /// Errors inside a capture (it is a host copy).
    pub fn set_step_scalars(&self, s: &StepScalars) -> Result<()> {
        let mut st = self.step_state()?;
        if st.buf.is_none() {
            st.buf = Some(self.alloc::<i32>(WORDS)?);
        }
        let buf = st.buf.as_mut().expect("allocated above");
        self.htod(&words(s), buf.view_mut())?;
        st.now = Some(*s);
        Ok(())
    }

    /// The pointer argument for a kernel's step slot: NULL outside a capture (the kernel uses its
    /// by-value argument, `slot`'s value), the slot's device address inside one, after checking
    /// that the slot holds `slot`'s value bit for bit.
    pub(crate) fn step_arg(&self, kernel: &str, slot: StepSlot) -> Result<KernelArg> {
        if !self.capturing() {
            return Ok(KernelArg::Ptr(DevPtr::NULL));
        }
        let st = self.step_state()?;
        let (Some(now), Some(buf)) = (st.now, st.buf.as_ref()) else {
            bail!(
                "{kernel} inside Device::capture reads a per-step value, but no step scalars were \
                 set: call Device::set_step_scalars before capturing"
            );
        };
        let (same, words, what) = match slot {
            StepSlot::DropoutStep(v) => (now.dropout_step == v, DROPOUT_WORDS, "the dropout step"),
            StepSlot::AdamW(v) => (
                now.adamw.map(f32::to_bits) == v.map(f32::to_bits),
                ADAMW_WORDS,
                "AdamW's step factors",
            ),
            StepSlot::DScale(v) => (
                now.dscale.to_bits() == v.to_bits(),
                DSCALE_WORDS,
                "the cross-entropy dscale",
            ),
        };
        if !same {
            bail!(
                "{kernel} inside Device::capture: {what} ({slot:?}) differs from the step scalars \
                 set for this step ({now:?}): set them to the captured step's values first"
            );
        }
        Ok(KernelArg::from(buf.view().slice(words)))
    }

    fn step_state(&self) -> Result<std::sync::MutexGuard<'_, StepState>> {
        self.step
            .lock()
            .map_err(|_| anyhow!("device step scalars poisoned by an earlier panic"))
    }
}
