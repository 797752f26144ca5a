//! Block-level device operations of [`CudaBackend`]: gather, the deterministic combine, the
//! routers, and a whole MoE block computed from experts resident in device slots
//! ([`CudaBackend::moe_block_slots`]): inputs uploaded once, per expert gather → FFN → scatter
//! into fixed (token, slot) rows, one combine, one download.

use cudarc::driver::PushKernelArg;

use super::compute::{CudaBackend, dptr, u32c};
use super::device::drv;
use super::kernels::{elementwise, per_token};
use super::options::SlotExpert;
use super::slots::DeviceSlots;
use crate::error::{Error, Result};
use crate::ffn::FfnKind;

impl CudaBackend {
    /// `out[t] = Σ_j w[t,j] · rows[slot_row[t,j]]` (slot order, no atomics; `slot_row` -1 =
    /// dropped): the deterministic combine, here from host data.
    #[allow(clippy::too_many_arguments)]
    pub fn combine(
        &self,
        rows: &[f32],
        slot_row: &[i32],
        weights: &[f32],
        tokens: usize,
        k: usize,
        hidden: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let n_rows = rows.len().checked_div(hidden).unwrap_or(0);
        if slot_row.len() != tokens * k || weights.len() != tokens * k {
            return Err(Error::input(format!("combine: need {tokens}×{k} slot rows and weights")));
        }
        if out.len() != tokens * hidden || rows.len() != n_rows * hidden {
            return Err(Error::input("combine: buffer sizes do not match the shapes".to_string()));
        }
        if let Some(bad) = slot_row.iter().find(|&&r| r < -1 || r >= n_rows as i32) {
            return Err(Error::input(format!("combine: row {bad} outside 0..{n_rows}")));
        }
        if out.is_empty() {
            return Ok(());
        }
        let _guard = self.blas.lock();
        let (rd, sd, wd) = (self.upload(rows)?, self.upload(slot_row)?, self.upload(weights)?);
        let od = self.alloc::<f32>(out.len())?;
        let s = self.stream();
        let (p_r, p_s, p_w, p_o) = (dptr(&rd, s), dptr(&sd, s), dptr(&wd, s), dptr(&od, s));
        let (t32, k32, h32, acc) =
            (u32c(tokens, "tokens")?, u32c(k, "k")?, u32c(hidden, "hidden")?, 0i32);
        let f = self.kernels.get("combine_f32")?;
        let mut b = s.launch_builder(f);
        b.arg(&p_r).arg(&p_s).arg(&p_w).arg(&p_o).arg(&t32).arg(&k32).arg(&h32).arg(&acc);
        // SAFETY: sizes checked above: rows n_rows·hidden, slot_row/weights tokens·k with every
        // index in -1..n_rows, out tokens·hidden.
        unsafe { b.launch(elementwise(out.len())) }.map_err(|e| drv("launching combine", e))?;
        self.download(&od, out)
    }

    /// `out[r] = src[idx[r]]` for f32 rows of `cols` values.
    pub fn gather_rows(
        &self,
        src: &[f32],
        cols: usize,
        idx: &[i32],
        out: &mut [f32],
    ) -> Result<()> {
        let n_src = src.len().checked_div(cols).unwrap_or(0);
        if out.len() != idx.len() * cols || idx.iter().any(|&i| i < 0 || i as usize >= n_src) {
            return Err(Error::input(format!("gather: bad indices or sizes ({n_src} rows)")));
        }
        if out.is_empty() {
            return Ok(());
        }
        let _guard = self.blas.lock();
        let (sd, id, od) = (self.upload(src)?, self.upload(idx)?, self.alloc::<f32>(out.len())?);
        let s = self.stream();
        let (p_s, p_i, p_o) = (dptr(&sd, s), dptr(&id, s), dptr(&od, s));
        let (r32, c32) = (u32c(idx.len(), "rows")?, u32c(cols, "cols")?);
        let f = self.kernels.get("gather_rows_f32")?;
        let mut b = s.launch_builder(f);
        b.arg(&p_s).arg(&p_i).arg(&p_o).arg(&r32).arg(&c32);
        // SAFETY: every index is in 0..n_src (checked); out holds idx.len()·cols f32.
        unsafe { b.launch(elementwise(out.len())) }.map_err(|e| drv("launching gather", e))?;
        self.download(&od, out)
    }

    /// Softmax top-k routing of `logits [tokens × experts]` into `ids`/`weights [tokens × k]`.
    pub fn softmax_topk(
        &self,
        logits: &[f32],
        experts: usize,
        k: usize,
        renormalize: bool,
        ids: &mut [i32],
        weights: &mut [f32],
    ) -> Result<()> {
        self.route(logits, None, experts, k, None, renormalize, 1.0, ids, weights)
    }

    /// DeepSeek-V3 grouped sigmoid routing: `(n_group, topk_group)` groups, optional score
    /// correction bias, `scale` = routed scaling factor.
    #[allow(clippy::too_many_arguments)]
    pub fn grouped_sigmoid_topk(
        &self,
        logits: &[f32],
        bias: Option<&[f32]>,
        experts: usize,
        k: usize,
        groups: (usize, usize),
        renormalize: bool,
        scale: f32,
        ids: &mut [i32],
        weights: &mut [f32],
    ) -> Result<()> {
        self.route(logits, bias, experts, k, Some(groups), renormalize, scale, ids, weights)
    }

    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        logits: &[f32],
        bias: Option<&[f32]>,
        experts: usize,
        k: usize,
        groups: Option<(usize, usize)>,
        renormalize: bool,
        scale: f32,
        ids: &mut [i32],
        weights: &mut [f32],
    ) -> Result<()> {
        let tokens = logits.len().checked_div(experts).unwrap_or(0);
        let ok = experts > 0
            && k <= experts
            && logits.len() == tokens * experts
            && ids.len() == tokens * k
            && weights.len() == tokens * k
            && bias.is_none_or(|b| b.len() == experts)
            && groups.is_none_or(|(g, tg)| {
                g > 0
                    && g <= 64
                    && experts % g == 0
                    && tg >= 1
                    && tg <= g
                    && k <= tg * (experts / g)
            });
        if !ok {
            return Err(Error::input(format!(
                "router: {} logits for {experts} experts, top-{k}, groups {groups:?}: bad shapes",
                logits.len()
            )));
        }
        if tokens == 0 || k == 0 {
            return Ok(());
        }
        let _guard = self.blas.lock();
        let s = self.stream();
        let ld = self.upload(logits)?;
        let bd = bias.map(|b| self.upload(b)).transpose()?;
        let (idd, wd) = (self.alloc::<i32>(ids.len())?, self.alloc::<f32>(weights.len())?);
        let (p_l, p_b) = (dptr(&ld, s), bd.as_ref().map_or(0, |b| dptr(b, s)));
        let (p_i, p_w) = (dptr(&idd, s), dptr(&wd, s));
        let (t32, e32, k32) = (u32c(tokens, "tokens")?, u32c(experts, "experts")?, u32c(k, "k")?);
        let renorm = renormalize as i32;
        match groups {
            None => {
                let f = self.kernels.get("softmax_topk_f32")?;
                let mut b = s.launch_builder(f);
                b.arg(&p_l).arg(&p_i).arg(&p_w).arg(&t32).arg(&e32).arg(&k32).arg(&renorm);
                // SAFETY: logits tokens·experts f32, ids/weights tokens·k (checked above).
                unsafe { b.launch(per_token(tokens)) }.map_err(|e| drv("launching router", e))?;
            }
            Some((g, tg)) => {
                let (g32, tg32) = (g as u32, tg as u32);
                let f = self.kernels.get("grouped_sigmoid_topk_f32")?;
                let mut b = s.launch_builder(f);
                b.arg(&p_l).arg(&p_b).arg(&p_i).arg(&p_w).arg(&t32).arg(&e32).arg(&k32);
                b.arg(&g32).arg(&tg32).arg(&renorm).arg(&scale);
                // SAFETY: as above, plus bias (or null) of `experts` f32 and 1 ≤ groups ≤ 64
                // dividing the experts, with at least k experts in the kept groups.
                unsafe { b.launch(per_token(tokens)) }.map_err(|e| drv("launching router", e))?;
            }
        }
        self.download(&idd, ids)?;
        self.download(&wd, weights)
    }

    /// A whole MoE block on the device from experts resident in slots. `x` is
    /// `[tokens × hidden]`; `expert_ids`/`weights` are the routing, `[tokens × k]` with -1 for a
    /// dropped assignment; `experts` lists every expert the routing uses, in compute order.
    /// Each expert's rows are gathered, run through its FFN (the compute stream waits on its
    /// slot's copy) and scattered to fixed (token, slot) rows; the combine then sums each
    /// token's k rows in slot order, so the bits do not depend on the order of `experts`
    /// (resident-first or not, offloaded or not).
    #[allow(clippy::too_many_arguments)]
    pub fn moe_block_slots(
        &self,
        ffn: FfnKind,
        slots: &DeviceSlots,
        x: &[f32],
        hidden: usize,
        expert_ids: &[i32],
        weights: &[f32],
        k: usize,
        experts: &[SlotExpert<'_>],
        out: &mut [f32],
    ) -> Result<()> {
        let tokens = x.len().checked_div(hidden).unwrap_or(0);
        if x.len() != tokens * hidden
            || out.len() != x.len()
            || expert_ids.len() != tokens * k
            || weights.len() != tokens * k
        {
            return Err(Error::input(format!(
                "block: {} inputs of width {hidden}, {} routing entries for top-{k}: bad shapes",
                x.len(),
                expert_ids.len()
            )));
        }
        // Assignment positions (t·k + j) of each listed expert; every routed expert must be listed.
        let mut positions: Vec<Vec<i32>> = vec![Vec::new(); experts.len()];
        for (a, &e) in expert_ids.iter().enumerate() {
            if e < 0 {
                continue;
            }
            let i = experts.iter().position(|s| s.expert == e as usize).ok_or_else(|| {
                Error::input(format!("expert {e} is routed to but not resident in a slot"))
            })?;
            positions[i].push(a as i32);
        }
        for s in experts {
            if s.layout.hidden != hidden || s.layout.total_bytes > slots.slot_bytes() {
                return Err(Error::input(format!(
                    "expert {}: layout of width {} / {} bytes does not match width {hidden} / \
                     slots of {} bytes",
                    s.expert,
                    s.layout.hidden,
                    s.layout.total_bytes,
                    slots.slot_bytes()
                )));
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        let blas = self.blas.lock();
        let st = self.stream();
        let xd = self.upload(x)?;
        let rows = self.alloc::<f32>(tokens * k * hidden)?;
        let (p_x, p_rows, h32) = (dptr(&xd, st), dptr(&rows, st), u32c(hidden, "hidden")?);
        for (s, pos) in experts.iter().zip(&positions) {
            if pos.is_empty() {
                continue;
            }
            let n = pos.len();
            let tok: Vec<i32> = pos.iter().map(|&a| a / k as i32).collect();
            let (td, pd, xe) =
                (self.upload(&tok)?, self.upload(pos)?, self.alloc::<f32>(n * hidden)?);
            let (p_t, p_p, p_xe, n32) =
                (dptr(&td, st), dptr(&pd, st), dptr(&xe, st), u32c(n, "rows")?);
            let g = self.kernels.get("gather_rows_f32")?;
            let mut b = st.launch_builder(g);
            b.arg(&p_x).arg(&p_t).arg(&p_xe).arg(&n32).arg(&h32);
            // SAFETY: token indices are < tokens (a < tokens·k); x holds tokens·hidden, xe n·hidden.
            unsafe { b.launch(elementwise(n * hidden)) }.map_err(|e| drv("launching gather", e))?;
            let base = slots.acquire_for_compute(s.slot, st)?;
            let y = self.ffn_device(&blas, ffn, s.layout, base, &xe, n);
            let released = slots.release_after_compute(s.slot, st);
            let y = y?;
            released?;
            let p_y = dptr(&y, st);
            let sc = self.kernels.get("scatter_rows_f32")?;
            let mut b = st.launch_builder(sc);
            b.arg(&p_y).arg(&p_p).arg(&p_rows).arg(&n32).arg(&h32);
            // SAFETY: positions are distinct and < tokens·k; y holds n·hidden, rows tokens·k·hidden.
            unsafe { b.launch(elementwise(n * hidden)) }
                .map_err(|e| drv("launching scatter", e))?;
        }
        let slot_row: Vec<i32> = expert_ids
            .iter()
            .enumerate()
            .map(|(a, &e)| if e < 0 { -1 } else { a as i32 })
            .collect();
        let (sd, wd, od) =
            (self.upload(&slot_row)?, self.upload(weights)?, self.alloc::<f32>(out.len())?);
        let (p_s, p_w, p_o) = (dptr(&sd, st), dptr(&wd, st), dptr(&od, st));
        let (t32, k32, acc) = (u32c(tokens, "tokens")?, u32c(k, "k")?, 0i32);
        let f = self.kernels.get("combine_f32")?;
        let mut b = st.launch_builder(f);
        b.arg(&p_rows).arg(&p_s).arg(&p_w).arg(&p_o).arg(&t32).arg(&k32).arg(&h32).arg(&acc);
        // SAFETY: rows holds tokens·k·hidden (every row with slot_row ≥ 0 was written by a
        // scatter above), slot_row/weights tokens·k, out tokens·hidden.
        unsafe { b.launch(elementwise(out.len())) }.map_err(|e| drv("launching combine", e))?;
        self.download(&od, out)
    }

    /// Benchmark helper: an f32 input resident on the device (uploaded before any timing, so
    /// that its copy does not queue behind an expert copy on the copy engine).
    pub(crate) fn device_input(&self, x: &[f32]) -> Result<cudarc::driver::CudaSlice<f32>> {
        let _guard = self.blas.lock();
        let xd = self.upload(x)?;
        self.stream().synchronize().map_err(|e| drv("uploading an input", e))?;
        Ok(xd)
    }

    /// Benchmark helper: `rounds` FFNs of the `tokens` rows of `xd` with weights from `slot`;
    /// returns the wall seconds from the first launch to the compute stream's completion (the
    /// copy stream is not waited for, so copies may overlap).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn time_slot_ffn(
        &self,
        ffn: FfnKind,
        slots: &DeviceSlots,
        slot: usize,
        layout: &super::options::ExpertLayout,
        xd: &cudarc::driver::CudaSlice<f32>,
        tokens: usize,
        rounds: usize,
    ) -> Result<f64> {
        if xd.len() < tokens * layout.hidden {
            return Err(Error::input("benchmark input smaller than tokens × hidden".to_string()));
        }
        let blas = self.blas.lock();
        let st = self.stream();
        st.synchronize().map_err(|e| drv("synchronising before timing", e))?;
        let t0 = std::time::Instant::now();
        for _ in 0..rounds.max(1) {
            let base = slots.acquire_for_compute(slot, st)?;
            let y = self.ffn_device(&blas, ffn, layout, base, xd, tokens);
            slots.release_after_compute(slot, st)?;
            drop(y?);
        }
        st.synchronize().map_err(|e| drv("timing expert FFNs", e))?;
        Ok(t0.elapsed().as_secs_f64())
    }
}
