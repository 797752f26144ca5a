//! GPU tests of the CUDA backend against CPU references. Without a usable device (no driver,
//! libraries not on the path) each test prints why it is skipped and passes; set
//! `MOE_OFFLOAD_REQUIRE_GPU=1` (as `tools/gpu-check.sh` does) to make a missing GPU a failure.
//! Without the `cuda` feature, only the "not compiled" behaviour is checked.

#[cfg(not(feature = "cuda"))]
#[test]
fn without_the_feature_cuda_is_refused() {
    use moe_offload::backend::cuda::{CudaBackend, TransferBenchOptions, bench_transfer, probe};
    assert!(matches!(probe(0), Err(moe_offload::Error::NotCompiledWithCuda)));
    assert!(matches!(CudaBackend::new(0), Err(moe_offload::Error::NotCompiledWithCuda)));
    let opts = TransferBenchOptions { model: "x".into(), paths: vec![], iters: 1, ordinal: 0 };
    assert!(matches!(bench_transfer(&opts), Err(moe_offload::Error::NotCompiledWithCuda)));
}

#[cfg(feature = "cuda")]
mod gpu {
    use std::io::Write;
    use std::sync::Arc;

    use moe_offload::backend::cuda::{
        CudaBackend, DeviceSlots, ExpertLayout, SlotExpert, TransferOptions, TransferPath, Uploader,
    };
    use moe_offload::backend::{Backend, ExpertWeights, WeightRef};
    use moe_offload::dtype::{DType, encode_from_f32, to_f32_vec};
    use moe_offload::ffn::{Activation, FfnKind};
    use moe_offload::rng::SplitMix64;

    /// f32 weights through cuBLAS in true f32 (no TF32) differ from an f64 reference by
    /// rounding only (~1e-6 relative); TF32 would show ~1e-3, so 1e-4 catches it.
    const TOL_F32: f64 = 1e-4;
    /// bf16/f16 mode rounds the activations fed to each GEMM to the weight dtype (8 bits of
    /// mantissa for bf16: ~2e-3 relative per element, averaging out over a dot product).
    const TOL_HALF: f64 = 1e-2;

    fn backend() -> Option<CudaBackend> {
        match CudaBackend::new(0) {
            Ok(b) => Some(b),
            Err(e) => {
                if std::env::var("MOE_OFFLOAD_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                    panic!("MOE_OFFLOAD_REQUIRE_GPU=1 but no usable CUDA device: {e}");
                }
                eprintln!("skipped: no usable CUDA device: {e}");
                None
            }
        }
    }

    fn randn(seed: u64, n: usize, scale: f64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| (r.normal() * scale) as f32).collect()
    }

    fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| y * y).sum();
        (num / den.max(1e-300)).sqrt()
    }

    /// `y = x·Wᵀ (+ b)` in f64 from the stored weights.
    fn linear_ref(
        x: &[f32],
        rows: usize,
        w: &[f32],
        n: usize,
        k: usize,
        b: Option<&[f32]>,
    ) -> Vec<f64> {
        let mut y = vec![0f64; rows * n];
        for r in 0..rows {
            for o in 0..n {
                let mut acc = b.map_or(0.0, |b| b[o] as f64);
                for i in 0..k {
                    acc += x[r * k + i] as f64 * w[o * k + i] as f64;
                }
                y[r * n + o] = acc;
            }
        }
        y
    }

    struct Expert {
        dtype: DType,
        hidden: usize,
        ffn: usize,
        gate: Option<Vec<u8>>,
        up: Vec<u8>,
        down: Vec<u8>,
        up_bias: Option<Vec<u8>>,
        down_bias: Option<Vec<u8>>,
    }

    impl Expert {
        fn random(
            seed: u64,
            dtype: DType,
            hidden: usize,
            ffn: usize,
            glu: bool,
            bias: bool,
        ) -> Expert {
            let enc = |s: u64, n: usize, sc: f64| encode_from_f32(&dtype, &randn(s, n, sc));
            let (sh, sf) = (1.0 / (hidden as f64).sqrt(), 1.0 / (ffn as f64).sqrt());
            Expert {
                gate: glu.then(|| enc(seed + 1, ffn * hidden, sh)),
                up: enc(seed + 2, ffn * hidden, sh),
                down: enc(seed + 3, hidden * ffn, sf),
                up_bias: bias.then(|| enc(seed + 4, ffn, 0.1)),
                down_bias: bias.then(|| enc(seed + 5, hidden, 0.1)),
                dtype,
                hidden,
                ffn,
            }
        }

        fn weights(&self) -> ExpertWeights<'_> {
            fn w<'a>(e: &'a Expert, bytes: &'a [u8], rows: usize, cols: usize) -> WeightRef<'a> {
                WeightRef { dtype: &e.dtype, rows, cols, bytes }
            }
            ExpertWeights {
                gate: self.gate.as_ref().map(|g| w(self, g, self.ffn, self.hidden)),
                up: w(self, &self.up, self.ffn, self.hidden),
                down: w(self, &self.down, self.hidden, self.ffn),
                up_bias: self.up_bias.as_ref().map(|b| w(self, b, 1, self.ffn)),
                down_bias: self.down_bias.as_ref().map(|b| w(self, b, 1, self.hidden)),
            }
        }

        /// Packed slot bytes, in `ExpertLayout` order.
        fn sources(&self) -> Vec<&[u8]> {
            let mut v: Vec<&[u8]> = Vec::new();
            v.extend(self.gate.as_deref());
            v.push(&self.up);
            v.push(&self.down);
            v.extend(self.up_bias.as_deref());
            v.extend(self.down_bias.as_deref());
            v
        }

        fn layout(&self) -> ExpertLayout {
            ExpertLayout::packed(
                self.dtype.clone(),
                self.hidden,
                self.ffn,
                self.gate.is_some(),
                self.up_bias.is_some(),
                self.down_bias.is_some(),
            )
            .unwrap()
        }

        /// f64 reference of the FFN from the stored weights.
        fn reference(&self, kind: FfnKind, x: &[f32], rows: usize) -> Vec<f64> {
            let f = |b: &Vec<u8>| to_f32_vec(&self.dtype, b);
            let (h, n) = (self.hidden, self.ffn);
            let u =
                linear_ref(x, rows, &f(&self.up), n, h, self.up_bias.as_ref().map(f).as_deref());
            let act = match kind {
                FfnKind::Glu(a) | FfnKind::Plain(a) => a,
            };
            let hmid: Vec<f32> = match kind {
                FfnKind::Glu(_) => {
                    let g = linear_ref(x, rows, &f(self.gate.as_ref().unwrap()), n, h, None);
                    g.iter()
                        .zip(&u)
                        .map(|(g, u)| act.apply(*g as f32) as f64 * u)
                        .map(|v| v as f32)
                        .collect()
                }
                FfnKind::Plain(_) => u.iter().map(|v| act.apply(*v as f32)).collect(),
            };
            linear_ref(&hmid, rows, &f(&self.down), h, n, self.down_bias.as_ref().map(f).as_deref())
        }
    }

    #[test]
    fn linear_matches_cpu_f32_and_bf16() {
        let Some(b) = backend() else { return };
        for (dt, tol) in [(DType::F32, TOL_F32), (DType::BF16, TOL_HALF)] {
            let (rows, n, k) = (5, 48, 72);
            let x = randn(1, rows * k, 1.0);
            let w = encode_from_f32(&dt, &randn(2, n * k, 0.1));
            let bias = encode_from_f32(&dt, &randn(3, n, 0.1));
            let wr = WeightRef { dtype: &dt, rows: n, cols: k, bytes: &w };
            let br = WeightRef { dtype: &dt, rows: 1, cols: n, bytes: &bias };
            let mut out = vec![0f32; rows * n];
            b.linear(&x, rows, wr, Some(br), &mut out).unwrap();
            let want =
                linear_ref(&x, rows, &to_f32_vec(&dt, &w), n, k, Some(&to_f32_vec(&dt, &bias)));
            let e = rel_l2(&out, &want);
            assert!(e < tol, "{dt}: rel L2 {e}");
        }
    }

    #[test]
    fn expert_ffn_matches_cpu_for_every_form() {
        let Some(b) = backend() else { return };
        let cases = [
            (FfnKind::Glu(Activation::Silu), DType::F32, false, TOL_F32),
            (FfnKind::Glu(Activation::Gelu), DType::BF16, false, TOL_HALF),
            (FfnKind::Plain(Activation::Relu), DType::F32, true, TOL_F32),
            (FfnKind::Plain(Activation::Gelu), DType::F16, true, TOL_HALF),
            (FfnKind::Glu(Activation::Silu), DType::BF16, false, TOL_HALF),
        ];
        for (i, (kind, dt, bias, tol)) in cases.into_iter().enumerate() {
            let e = Expert::random(10 * i as u64, dt.clone(), 64, 96, kind.is_glu(), bias);
            let rows = 7;
            let x = randn(99, rows * 64, 1.0);
            let mut out = vec![0f32; rows * 64];
            b.expert_ffn(kind, &e.weights(), &x, rows, &mut out).unwrap();
            let err = rel_l2(&out, &e.reference(kind, &x, rows));
            assert!(err < tol, "{} {dt}: rel L2 {err}", kind.name());
        }
    }

    #[test]
    fn slot_ffn_equals_resident_and_combine_is_order_independent() {
        let Some(b) = backend() else { return };
        let (hidden, ffn, tokens, k) = (64, 128, 6, 2);
        let kind = FfnKind::Glu(Activation::Silu);
        let experts: Vec<Expert> = (0..3)
            .map(|i| Expert::random(100 + i, DType::BF16, hidden, ffn, true, false))
            .collect();
        let layout = experts[0].layout();
        let slots =
            DeviceSlots::new(&b, layout.total_bytes, 2 * layout.total_bytes as u64 + 512).unwrap();
        assert_eq!(slots.num_slots(), 2);
        let up = Uploader::new(&slots, TransferOptions::default(), vec![]).unwrap();
        let x = randn(7, tokens * hidden, 1.0);
        // Token t uses experts t % 3 and (t + 1) % 3; row of (t, j) = t * k + j.
        let assign: Vec<usize> = (0..tokens).flat_map(|t| [t % 3, (t + 1) % 3]).collect();
        let weights: Vec<f32> = (0..tokens).flat_map(|t| [0.7 - 0.01 * t as f32, 0.3]).collect();
        let slot_row: Vec<i32> = (0..(tokens * k) as i32).collect();
        let run = |order: &[usize], via_slots: bool| -> Vec<f32> {
            let mut rows = vec![0f32; tokens * k * hidden];
            for (n, &e) in order.iter().enumerate() {
                let idx: Vec<usize> = (0..tokens * k).filter(|&a| assign[a] == e).collect();
                let xi: Vec<f32> =
                    idx.iter().flat_map(|&a| x[(a / k) * hidden..][..hidden].to_vec()).collect();
                let mut yi = vec![0f32; xi.len()];
                if via_slots {
                    let slot = n % slots.num_slots();
                    up.upload(&experts[e].sources(), slot).unwrap();
                    b.expert_ffn_slot(kind, &slots, slot, &layout, &xi, idx.len(), &mut yi)
                        .unwrap();
                } else {
                    b.expert_ffn(kind, &experts[e].weights(), &xi, idx.len(), &mut yi).unwrap();
                }
                for (j, &a) in idx.iter().enumerate() {
                    rows[a * hidden..][..hidden].copy_from_slice(&yi[j * hidden..][..hidden]);
                }
            }
            let mut out = vec![0f32; tokens * hidden];
            b.combine(&rows, &slot_row, &weights, tokens, k, hidden, &mut out).unwrap();
            out
        };
        let resident = run(&[0, 1, 2], false);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&resident), bits(&run(&[2, 0, 1], false)));
        assert_eq!(bits(&resident), bits(&run(&[1, 2, 0], true)), "offloaded ≠ resident");
        // The whole block on the device from three resident slots, in two expert orders.
        let slots3 =
            DeviceSlots::new(&b, layout.total_bytes, 3 * layout.total_bytes as u64 + 768).unwrap();
        let up3 = Uploader::new(&slots3, TransferOptions::default(), vec![]).unwrap();
        for (e, ex) in experts.iter().enumerate() {
            up3.upload(&ex.sources(), e).unwrap();
        }
        let ids: Vec<i32> = assign.iter().map(|&e| e as i32).collect();
        for order in [[0, 1, 2], [2, 1, 0]] {
            let list: Vec<SlotExpert> =
                order.iter().map(|&e| SlotExpert { expert: e, slot: e, layout: &layout }).collect();
            let mut out = vec![0f32; tokens * hidden];
            b.moe_block_slots(kind, &slots3, &x, hidden, &ids, &weights, k, &list, &mut out)
                .unwrap();
            assert_eq!(bits(&resident), bits(&out), "device block ≠ resident ({order:?})");
        }
        let missing = [SlotExpert { expert: 0, slot: 0, layout: &layout }];
        let mut out = vec![0f32; tokens * hidden];
        let err =
            b.moe_block_slots(kind, &slots3, &x, hidden, &ids, &weights, k, &missing, &mut out);
        assert!(err.is_err(), "a routed expert without a slot must be an error");
        // A dropped slot (-1) contributes nothing.
        let mut dropped = slot_row.clone();
        dropped[1] = -1;
        let rows: Vec<f32> = randn(5, tokens * k * hidden, 1.0);
        let mut out = vec![0f32; tokens * hidden];
        b.combine(&rows, &dropped, &weights, tokens, k, hidden, &mut out).unwrap();
        for c in 0..hidden {
            let want = weights[0] as f64 * rows[c] as f64;
            assert!((out[c] as f64 - want).abs() < 1e-6, "dropped slot counted");
        }
    }

    #[test]
    fn router_and_gather_match_cpu() {
        let Some(b) = backend() else { return };
        let (tokens, experts, k) = (33, 8, 2);
        let logits = randn(3, tokens * experts, 2.0);
        let (mut ids, mut w) = (vec![0i32; tokens * k], vec![0f32; tokens * k]);
        b.softmax_topk(&logits, experts, k, true, &mut ids, &mut w).unwrap();
        for t in 0..tokens {
            let l = &logits[t * experts..][..experts];
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|&a, &c| l[c].total_cmp(&l[a]).then(a.cmp(&c)));
            let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let p: Vec<f64> = order[..k].iter().map(|&e| (l[e] as f64 - m).exp()).collect();
            let s: f64 = p.iter().sum();
            for j in 0..k {
                assert_eq!(ids[t * k + j], order[j] as i32, "token {t}");
                assert!((w[t * k + j] as f64 - p[j] / s).abs() < 1e-5);
            }
        }
        let src = randn(4, 10 * 3, 1.0);
        let idx = [9, 0, 4, 4];
        let mut out = vec![0f32; idx.len() * 3];
        b.gather_rows(&src, 3, &idx, &mut out).unwrap();
        for (r, &i) in idx.iter().enumerate() {
            assert_eq!(out[r * 3..][..3], src[i as usize * 3..][..3]);
        }
        assert!(b.gather_rows(&src, 3, &[10], &mut [0f32; 3]).is_err(), "index out of range");
    }

    fn golden_dir(case: &str) -> Option<std::path::PathBuf> {
        // Relative first: tools/gpu-check.sh runs the prebuilt test from the source tree's copy.
        ["tests/golden", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden")]
            .iter()
            .map(|base| std::path::Path::new(base).join(case))
            .find(|p| p.join("golden.safetensors").exists())
    }

    /// Golden conformance of the softmax-top-k (Mixtral) cases on the GPU: router logits in
    /// true f32, device top-k, then the whole block from slots filled by the uploader.
    #[test]
    fn golden_mixtral_blocks_match_transformers() {
        use moe_offload::routing::RouterSpec;
        use moe_offload::{Checkpoint, ModelSpec};
        let Some(b) = backend() else { return };
        for (case, tol) in [("mixtral-top2", TOL_F32), ("mixtral-bf16", TOL_HALF)] {
            let Some(dir) = golden_dir(case) else {
                panic!("golden case {case} not found (run from the source tree)");
            };
            let ckpt = Checkpoint::open(&dir).unwrap();
            let spec = ModelSpec::from_checkpoint(&ckpt).unwrap();
            let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
            let golden = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let read = |n: &str| to_f32_vec(&DType::F32, golden.tensor(n).unwrap().data());
            for block in &spec.blocks {
                let RouterSpec::SoftmaxTopK { top_k, renormalize } = block.router else {
                    panic!("{case}: expected a softmax top-k router");
                };
                let x = read(&format!("{}.input", block.prefix));
                let want: Vec<f64> =
                    read(&format!("{}.output", block.prefix)).iter().map(|v| *v as f64).collect();
                let (hidden, ne) = (spec.hidden_size, block.num_experts());
                let tokens = x.len() / hidden;
                let gate = ckpt.tensor(block.router_weight.as_ref().unwrap()).unwrap();
                let gate32 = encode_from_f32(&DType::F32, &gate.to_f32().unwrap());
                let gw = WeightRef { dtype: &DType::F32, rows: ne, cols: hidden, bytes: &gate32 };
                let mut logits = vec![0f32; tokens * ne];
                b.linear(&x, tokens, gw, None, &mut logits).unwrap();
                let (mut ids, mut w) = (vec![0i32; tokens * top_k], vec![0f32; tokens * top_k]);
                b.softmax_topk(&logits, ne, top_k, renormalize, &mut ids, &mut w).unwrap();
                let layouts: Vec<ExpertLayout> =
                    (0..ne).map(|e| ExpertLayout::of_expert(&ckpt, block, e).unwrap()).collect();
                let slot_bytes = layouts.iter().map(|l| l.total_bytes).max().unwrap();
                let budget = (ne * (slot_bytes + 256)) as u64;
                let slots = DeviceSlots::new(&b, slot_bytes, budget).unwrap();
                let up =
                    Uploader::for_checkpoint(&slots, TransferOptions::default(), &ckpt).unwrap();
                for e in 0..ne {
                    up.upload(&ExpertLayout::sources(&ckpt, block, e).unwrap(), e).unwrap();
                }
                let list: Vec<SlotExpert> = layouts
                    .iter()
                    .enumerate()
                    .map(|(e, layout)| SlotExpert { expert: e, slot: e, layout })
                    .collect();
                let mut out = vec![0f32; x.len()];
                b.moe_block_slots(block.ffn, &slots, &x, hidden, &ids, &w, top_k, &list, &mut out)
                    .unwrap();
                let err = rel_l2(&out, &want);
                assert!(err < tol, "{case} {}: rel L2 {err} (tolerance {tol})", block.prefix);
            }
        }
    }

    /// A temp file of random bytes, mapped read-only (like a checkpoint).
    fn mapped(len: usize) -> (tempfile::NamedTempFile, Arc<memmap2::Mmap>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut r = SplitMix64::new(42);
        let bytes: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
        f.write_all(&bytes).unwrap();
        f.flush().unwrap();
        // SAFETY: the temp file is private to this test and never modified while mapped.
        let m = unsafe { memmap2::Mmap::map(f.as_file()) }.unwrap();
        (f, Arc::new(m))
    }

    #[test]
    fn every_transfer_path_round_trips_bytes_exactly() {
        let Some(b) = backend() else { return };
        let (_file, map) = mapped(3 << 20);
        let owned: Vec<u8> = (0..777u32).map(|i| (i * 7) as u8).collect();
        // Odd offsets and lengths, adjacent ranges (coalesced), a gap, a non-mapped source.
        let src: Vec<&[u8]> = vec![
            &map[3..100_003],
            &map[100_003..1_500_001],
            &map[2_000_001..3 << 20],
            &owned,
            &map[0..1],
        ];
        let total: usize = src.iter().map(|s| s.len()).sum();
        let want: Vec<u8> = src.concat();
        let slots = DeviceSlots::new(&b, total, 2 * total as u64 + 1024).unwrap();
        let paths = [
            TransferPath::Registered,
            TransferPath::PinnedRing { threads: 1 },
            TransferPath::PinnedRing { threads: 4 },
            TransferPath::Pageable,
            TransferPath::Auto,
        ];
        for path in paths {
            // Small windows, budget and buffers so that chunking and LRU eviction happen.
            let opts = TransferOptions {
                path,
                ring_buffers: 2,
                ring_buffer_bytes: 1 << 16,
                register_window: 1 << 18,
                register_budget: 3 << 20,
                ..Default::default()
            };
            let up = Uploader::new(&slots, opts, vec![map.clone()]).unwrap();
            for slot in [0, 1, 0] {
                let f = up.upload(&src, slot).unwrap();
                assert_eq!(f.bytes(), total as u64);
                f.wait().unwrap();
                assert!(f.is_complete().unwrap());
                let got = slots.download(slot, total).unwrap();
                assert!(got == want, "{path}: bytes differ in slot {slot}");
            }
            let st = up.stats();
            eprintln!("{path} → {}: {st:?}", up.path());
            assert_eq!(st.registered_bytes + st.staged_bytes + st.pageable_bytes, 3 * total as u64);
        }
    }

    #[test]
    fn forced_copy_failure_is_an_error_and_the_uploader_stays_usable() {
        let Some(b) = backend() else { return };
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let slots = DeviceSlots::new(&b, data.len(), 1 << 20).unwrap();
        for path in [TransferPath::PinnedRing { threads: 2 }, TransferPath::Pageable] {
            let opts = TransferOptions { path, fail_on_upload: Some(2), ..Default::default() };
            let up = Uploader::new(&slots, opts, vec![]).unwrap();
            up.upload(&[&data], 0).unwrap().wait().unwrap();
            let err = up.upload(&[&data], 1).unwrap_err();
            assert!(err.to_string().contains("injected"), "{err}");
            up.upload(&[&data], 1).unwrap().wait().unwrap();
            assert_eq!(slots.download(1, data.len()).unwrap(), data);
            assert_eq!(up.stats().failures, 1);
        }
        // Too large for a slot, a slot that does not exist: errors, not panics.
        let up = Uploader::new(&slots, TransferOptions::default(), vec![]).unwrap();
        let big = vec![0u8; slots.slot_bytes() + 1];
        assert!(up.upload(&[&big], 0).is_err());
        assert!(up.upload(&[&data], slots.num_slots()).is_err());
        assert!(DeviceSlots::new(&b, 1 << 20, 1000).is_err(), "budget below one slot");
    }
}
