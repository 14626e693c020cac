//! `row_gather` / `row_scatter_add` (kernels/gather.cu) against `ops::gather`, in f32 and bf16.

use crate::common::*;
use half::bf16;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::gather;
use pepler_cuda::ops;
use pepler_cuda::precision::Act;

fn gather_matches_reference<A: Act>(dev: &Device) {
    let prec = A::PRECISION;
    for &(rows, n, c) in &[(1usize, 1usize, 1usize), (9, 4, 3), (40, 33, 771)] {
        // distinct ids in a scrambled order, each in 0..rows
        let ids: Vec<i32> = (0..n).map(|r| ((r * 7 + 3) % rows) as i32).collect();
        let mut uniq = ids.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), n, "test ids must be distinct");
        let mut src = rand_vec(rows * c, 1, -2.0, 2.0);
        A::round_slice(&mut src);
        let mut want = vec![0.0; n * c];
        ops::gather::row_gather(&mut want, &src, &ids, c);
        let a = |v: &[f32]| v.iter().map(|&x| A::from_f32(x)).collect::<Vec<A>>();
        let wide = |v: Vec<A>| v.into_iter().map(A::to_f32).collect::<Vec<f32>>();
        let dsrc = dev.upload(&a(&src)).unwrap();
        let dids = dev.upload(&ids).unwrap();
        let mut out = dev.upload(&a(&vec![5.0; n * c + 1])).unwrap();
        gather::row_gather(dev, out.view_mut(), dsrc.view(), dids.view(), n, c, rows).unwrap();
        let got = wide(dev.download(out.view()).unwrap());
        let ctx = format!("rows={rows} n={n} c={c}");
        assert_close_at(prec, "gather.out", &ctx, &got[..n * c], &want);
        assert_eq!(got[n * c], 5.0, "{ctx}: wrote past out");

        // scatter the gathered rows, scaled, back onto a non-zero dst
        let mut g = rand_vec(n * c, 2, -1.0, 1.0);
        A::round_slice(&mut g);
        let mut dst0 = rand_vec(rows * c, 3, -1.0, 1.0);
        A::round_slice(&mut dst0);
        let mut want = dst0.clone();
        ops::gather::row_scatter_add(&mut want, &g, &ids, c);
        A::round_slice(&mut want);
        let dg = dev.upload(&a(&g)).unwrap();
        let mut dst = dev.upload(&a(&dst0)).unwrap();
        gather::row_scatter_add(dev, dst.view_mut(), dg.view(), dids.view(), n, c, rows).unwrap();
        let got = wide(dev.download(dst.view()).unwrap());
        assert_close_at(prec, "scatter.dst", &ctx, &got, &want);
    }
    // short buffers are errors
    let src = dev.alloc::<A>(6).unwrap();
    let ids = dev.upload(&[0i32, 1]).unwrap();
    let mut out = dev.alloc::<A>(3).unwrap();
    assert!(gather::row_gather(dev, out.view_mut(), src.view(), ids.view(), 2, 2, 3).is_err());
}

#[test]
fn row_gather_and_scatter_match_cpu_on_emu() {
    gather_matches_reference::<f32>(&emu());
}

#[test]
fn row_gather_and_scatter_match_cpu_on_emu_bf16() {
    gather_matches_reference::<bf16>(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn row_gather_and_scatter_match_cpu_on_cuda() {
    gather_matches_reference::<f32>(&gpu());
    gather_matches_reference::<bf16>(&gpu());
}
