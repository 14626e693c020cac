//! `embedding_forward` / `embedding_backward` (kernels/embedding.cu) against `ops::embedding`.
//! Both directions are bit-identical to the CPU reference (same single add per element forward,
//! same (b, j) summation order backward), so they are compared with zero tolerance, for f32 and
//! bf16 activations (`out` and `dout`; one body, generic over `A: Act`): in bf16 the forward's sum
//! is rounded once and the backward sums the exactly widened `dout` in f32.

use super::{emu_shuffled, up_i32};
use crate::common::*;
use half::bf16;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::embedding::{
    embedding_backward, embedding_backward_scratch_len, embedding_forward,
};
use pepler_cuda::ops::embedding::{self as cpu, EmbedShape};
use pepler_cuda::precision::Act;

/// Sentinel in output positions a call must not write.
const UNTOUCHED: f32 = 7.5;

struct EmbCase {
    s: EmbedShape,
    ids: Vec<i32>,
    table: Vec<f32>,
    wpe: Vec<f32>,
    dout: Vec<f32>,
    dtable0: Vec<f32>,
    dwpe0: Vec<f32>,
}

impl EmbCase {
    /// `hot`: share of the ids that are the same id (3), to stress long chains. `dout` (an
    /// activation gradient) holds values of `A`.
    fn new<A: Act>(s: EmbedShape, rows: usize, hot: f32, seed: u64) -> EmbCase {
        let r = rand_vec(s.batch * s.n, seed, 0.0, 1.0);
        let ids = r
            .iter()
            .enumerate()
            .map(|(i, &u)| {
                if u < hot {
                    3 % rows as i32
                } else {
                    ((i * 7 + (u * 1000.0) as usize) % rows) as i32
                }
            })
            .collect();
        let npos = s.pos0 + s.offset + s.n + 2;
        EmbCase {
            s,
            ids,
            table: rand_vec(rows * s.c, seed + 1, -1.0, 1.0),
            wpe: rand_vec(npos * s.c, seed + 2, -0.5, 0.5),
            dout: rounded::<A>(rand_vec(s.batch * s.seq * s.c, seed + 3, -1.0, 1.0)),
            dtable0: rand_vec(rows * s.c, seed + 4, -0.1, 0.1),
            dwpe0: rand_vec(npos * s.c, seed + 5, -0.1, 0.1),
        }
    }

    /// CPU: (out with or without wpe, rounded to `A`, dtable, dwpe).
    fn reference<A: Act>(&self, with_wpe: bool) -> [Vec<f32>; 3] {
        let mut out = vec![UNTOUCHED; self.s.batch * self.s.seq * self.s.c];
        let wpe = with_wpe.then_some(&self.wpe[..]);
        cpu::embedding_forward(&mut out, &self.table, &self.ids, wpe, self.s);
        A::round_slice(&mut out);
        let (mut dt, mut dw) = (self.dtable0.clone(), self.dwpe0.clone());
        cpu::embedding_backward(Some(&mut dt), Some(&mut dw), &self.dout, &self.ids, self.s);
        [out, dt, dw]
    }

    /// Device: (out, dtable, dwpe); `grads` picks which gradients are requested (the others come
    /// back as their initial values).
    fn run<A: Act>(&self, dev: &Device, with_wpe: bool, grads: (bool, bool)) -> [Vec<f32>; 3] {
        let s = self.s;
        let (table, wpe, ids) = (
            up(dev, &self.table),
            up(dev, &self.wpe),
            up_i32(dev, &self.ids),
        );
        let mut out = up_as::<A>(dev, &vec![UNTOUCHED; s.batch * s.seq * s.c]);
        let wpe_view = with_wpe.then(|| wpe.view());
        embedding_forward(dev, out.view_mut(), table.view(), ids.view(), wpe_view, s).unwrap();
        let (mut dt, mut dw) = (up(dev, &self.dtable0), up(dev, &self.dwpe0));
        // garbage scratch: the kernels must not depend on its contents
        let mut scratch = dev
            .upload(&vec![-7i32; embedding_backward_scratch_len(&s)])
            .unwrap();
        let dout = up_as::<A>(dev, &self.dout);
        embedding_backward(
            dev,
            grads.0.then(|| dt.view_mut()),
            grads.1.then(|| dw.view_mut()),
            scratch.view_mut(),
            dout.view(),
            ids.view(),
            s,
        )
        .unwrap();
        [
            down_as(dev, out.view()),
            down(dev, dt.view()),
            down(dev, dw.view()),
        ]
    }
}

const NAMES: [&str; 3] = ["embedding.out", "embedding.dtable", "embedding.dwpe"];

fn shapes() -> Vec<(EmbedShape, usize)> {
    let sh = |batch, n, seq, offset, pos0, c| EmbedShape {
        batch,
        n,
        seq,
        offset,
        pos0,
        c,
    };
    vec![
        (sh(1, 1, 1, 0, 0, 1), 1),
        (sh(3, 4, 7, 2, 1, 45), 11),
        // c > 256: the table pass needs two blocks along y
        (sh(2, 5, 5, 0, 3, 300), 6),
        (sh(5, 3, 9, 6, 0, 33), 50),
        // c % 8 == 0: the bf16 forward's 16-byte chunks
        (sh(3, 4, 6, 1, 2, 64), 9),
    ]
}

fn embedding_matches_reference<A: Act>(dev: &Device) {
    for (i, (s, rows)) in shapes().into_iter().enumerate() {
        let case = EmbCase::new::<A>(s, rows, 0.3, 100 + i as u64);
        for with_wpe in [true, false] {
            let want = case.reference::<A>(with_wpe);
            let got = case.run::<A>(dev, with_wpe, (true, true));
            for k in 0..3 {
                let ctx = format!("{} {s:?} wpe={with_wpe}", A::PRECISION);
                assert_close_at(A::PRECISION, NAMES[k], &ctx, &got[k], &want[k]);
                assert_bits_eq(&format!("{} {ctx}", NAMES[k]), &got[k], &want[k]);
            }
        }
    }
}

/// One id in most positions of a 40 x 9 call: a chain of ~250 occurrences summed by one thread.
fn hot_case<A: Act>() -> EmbCase {
    let s = EmbedShape {
        batch: 40,
        n: 9,
        seq: 10,
        offset: 1,
        pos0: 0,
        c: 37,
    };
    EmbCase::new::<A>(s, 20, 0.7, 7)
}

fn embedding_backward_is_bitwise_deterministic<A: Act>(dev: &Device, other: &Device) {
    let case = hot_case::<A>();
    assert!(case.ids.iter().filter(|&&id| id == 3).count() > 200);
    let want = case.reference::<A>(true);
    let first = case.run::<A>(dev, true, (true, true));
    let second = case.run::<A>(other, true, (true, true));
    let p = A::PRECISION;
    for k in 1..3 {
        assert_bits_eq(&format!("{} {p} vs CPU", NAMES[k]), &first[k], &want[k]);
        assert_bits_eq(
            &format!("{} {p} run vs run", NAMES[k]),
            &first[k],
            &second[k],
        );
    }
}

/// The forward with `out` `off_out` elements and `table`/`wpe` `off_tab` elements into their
/// buffers (behind padding that must stay untouched / is NaN if read): odd offsets make the bf16
/// kernel's chunks miss 16-byte alignment (element-by-element accesses).
fn embedding_forward_at<A: Act>(
    dev: &Device,
    case: &EmbCase,
    with_wpe: bool,
    off_out: usize,
    off_tab: usize,
) -> Vec<f32> {
    let s = case.s;
    let pad = vec![f32::NAN; off_tab];
    let table = up(dev, &[&pad[..], &case.table].concat());
    let wpe = up(dev, &[&pad[..], &case.wpe].concat());
    let ids = up_i32(dev, &case.ids);
    let mut out = up_as::<A>(dev, &vec![UNTOUCHED; off_out + s.batch * s.seq * s.c]);
    let wpe_view = with_wpe.then(|| wpe.slice(off_tab..));
    embedding_forward(
        dev,
        out.slice_mut(off_out..),
        table.slice(off_tab..),
        ids.view(),
        wpe_view,
        s,
    )
    .unwrap();
    let got = down_as(dev, out.view());
    assert!(
        got[..off_out].iter().all(|&v| v == UNTOUCHED),
        "padding written"
    );
    got[off_out..].to_vec()
}

/// Every forward element is one f32 add rounded once, on the vector path (c % 8 == 0, aligned
/// views) and element by element (odd view offsets, c % 8 != 0): the CPU's bits at every offset.
fn embedding_forward_is_alignment_independent<A: Act>(dev: &Device) {
    for (i, (s, rows)) in shapes().into_iter().enumerate() {
        let case = EmbCase::new::<A>(s, rows, 0.3, 300 + i as u64);
        for with_wpe in [true, false] {
            let want = case.reference::<A>(with_wpe);
            for (off_out, off_tab) in [(0, 0), (1, 0), (0, 1), (8, 4), (3, 5)] {
                let got = embedding_forward_at::<A>(dev, &case, with_wpe, off_out, off_tab);
                let ctx = format!(
                    "embedding.out {} {s:?} wpe={with_wpe} out offset {off_out}, table offset {off_tab}",
                    A::PRECISION
                );
                assert_bits_eq(&ctx, &got, &want[0]);
            }
        }
    }
}

#[test]
fn embedding_forward_is_alignment_independent_on_emu() {
    embedding_forward_is_alignment_independent::<f32>(&emu());
}

#[test]
fn embedding_forward_bf16_is_alignment_independent_on_emu() {
    embedding_forward_is_alignment_independent::<bf16>(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_forward_is_alignment_independent_on_cuda() {
    embedding_forward_is_alignment_independent::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_forward_bf16_is_alignment_independent_on_cuda() {
    embedding_forward_is_alignment_independent::<bf16>(&gpu());
}

#[test]
fn embedding_forward_and_backward_match_cpu_on_emu() {
    embedding_matches_reference::<f32>(&emu());
}

#[test]
fn embedding_forward_and_backward_bf16_match_cpu_on_emu() {
    embedding_matches_reference::<bf16>(&emu());
}

#[test]
fn embedding_backward_is_bitwise_deterministic_with_a_hot_id_across_schedules() {
    embedding_backward_is_bitwise_deterministic::<f32>(&emu(), &emu_shuffled(4242));
}

#[test]
fn embedding_backward_bf16_is_bitwise_deterministic_with_a_hot_id_across_schedules() {
    embedding_backward_is_bitwise_deterministic::<bf16>(&emu(), &emu_shuffled(4243));
}

#[test]
fn embedding_backward_skips_absent_gradients() {
    let dev = emu();
    let (s, rows) = shapes()[1];
    let case = EmbCase::new::<f32>(s, rows, 0.3, 5);
    let want = case.reference::<f32>(true);
    let only_table = case.run::<f32>(&dev, true, (true, false));
    assert_bits_eq("dtable (dwpe None)", &only_table[1], &want[1]);
    assert_bits_eq("dwpe untouched", &only_table[2], &case.dwpe0);
    let only_wpe = case.run::<f32>(&dev, true, (false, true));
    assert_bits_eq("dtable untouched", &only_wpe[1], &case.dtable0);
    assert_bits_eq("dwpe (dtable None)", &only_wpe[2], &want[2]);
}

#[test]
fn embedding_out_of_range_ids_write_nothing_out_of_bounds() {
    let dev = emu();
    let s = EmbedShape {
        batch: 2,
        n: 3,
        seq: 4,
        offset: 1,
        pos0: 0,
        c: 5,
    };
    let rows = 4;
    let mut case = EmbCase::new::<f32>(s, rows, 0.0, 9);
    case.ids = vec![1, -1, 2, 4, 1, 1000];
    // CPU: the valid occurrences only (bad ids -> id 0 with a zero gradient row; their out rows are
    // restored to the sentinel below)
    let mut valid = case.ids.clone();
    let mut dout = case.dout.clone();
    for (p, id) in valid.iter_mut().enumerate() {
        if *id < 0 || *id >= rows as i32 {
            *id = 0;
            let (b, j) = (p / s.n, p % s.n);
            dout[(b * s.seq + s.offset + j) * s.c..][..s.c].fill(0.0);
        }
    }
    let mut out_want = vec![UNTOUCHED; s.batch * s.seq * s.c];
    cpu::embedding_forward(&mut out_want, &case.table, &valid, Some(&case.wpe), s);
    for (p, &id) in case.ids.iter().enumerate() {
        if id < 0 || id >= rows as i32 {
            let (b, j) = (p / s.n, p % s.n);
            out_want[(b * s.seq + s.offset + j) * s.c..][..s.c].fill(UNTOUCHED);
        }
    }
    let mut dt_want = case.dtable0.clone();
    cpu::embedding_backward(Some(&mut dt_want), None, &dout, &valid, s);

    // dtable sits between two guard rows: any write outside its view would show there
    let guard = vec![-3.0f32; s.c];
    let mut dt = up(&dev, &[&guard[..], &case.dtable0, &guard].concat());
    let (table, wpe, ids) = (
        up(&dev, &case.table),
        up(&dev, &case.wpe),
        up_i32(&dev, &case.ids),
    );
    let mut out = up(&dev, &vec![UNTOUCHED; s.batch * s.seq * s.c]);
    embedding_forward(
        &dev,
        out.view_mut(),
        table.view(),
        ids.view(),
        Some(wpe.view()),
        s,
    )
    .unwrap();
    assert_close(
        "embedding.out",
        "bad ids",
        &down(&dev, out.view()),
        &out_want,
    );
    let mut scratch = dev
        .alloc::<i32>(embedding_backward_scratch_len(&s))
        .unwrap();
    let dout_dev = up(&dev, &case.dout);
    embedding_backward(
        &dev,
        Some(dt.slice_mut(s.c..s.c + rows * s.c)),
        None,
        scratch.view_mut(),
        dout_dev.view(),
        ids.view(),
        s,
    )
    .unwrap();
    let got = down(&dev, dt.view());
    assert_bits_eq("guard before dtable", &got[..s.c], &guard);
    assert_bits_eq("guard after dtable", &got[s.c + rows * s.c..], &guard);
    assert_close(
        "embedding.dtable",
        "bad ids",
        &got[s.c..s.c + rows * s.c],
        &dt_want,
    );
}

#[test]
fn embedding_launchers_reject_bad_shapes() {
    let dev = emu();
    let s = EmbedShape {
        batch: 2,
        n: 3,
        seq: 4,
        offset: 2,
        pos0: 0,
        c: 5,
    };
    let table = dev.alloc::<f32>(20).unwrap();
    let ids = dev.alloc::<i32>(6).unwrap();
    let mut out = dev.alloc::<f32>(40).unwrap();
    let err = embedding_forward(&dev, out.view_mut(), table.view(), ids.view(), None, s)
        .unwrap_err()
        .to_string();
    assert!(err.contains("offset 2 + n 3 > seq 4"), "{err}");
    let s = EmbedShape { offset: 1, ..s };
    let err = embedding_forward(&dev, out.view_mut(), table.slice(..19), ids.view(), None, s)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("table of 19 elements is not (rows, 5)"),
        "{err}"
    );
    let mut dt = dev.alloc::<f32>(20).unwrap();
    let mut scratch = dev.alloc::<i32>(11).unwrap();
    let err = embedding_backward(
        &dev,
        Some(dt.view_mut()),
        None,
        scratch.view_mut(),
        out.view(),
        ids.view(),
        s,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("scratch has 11 elements, needs at least 12"),
        "{err}"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_forward_and_backward_match_cpu_on_cuda() {
    embedding_matches_reference::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_forward_and_backward_bf16_match_cpu_on_cuda() {
    embedding_matches_reference::<bf16>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_backward_is_bitwise_deterministic_on_cuda() {
    let dev = gpu();
    embedding_backward_is_bitwise_deterministic::<f32>(&dev, &dev);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_backward_bf16_is_bitwise_deterministic_on_cuda() {
    let dev = gpu();
    embedding_backward_is_bitwise_deterministic::<bf16>(&dev, &dev);
}
