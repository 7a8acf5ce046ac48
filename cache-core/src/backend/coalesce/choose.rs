//! Whether coalescing pays on this machine, under this load: decided by measuring it.
//!
//! Coalescing gains where the client has CPU to spare and Redis round trips dominate
//! (1.3-2x raw at 64-1024 concurrent gets on a 2-core VM, unpinned), and loses where it
//! adds hand-offs the client has no CPU for (two tokio workers squeezed on one CPU:
//! 0.68x). No setting should make users pick: the coalescer measures both routes and
//! keeps the better one.
//!
//! The measure is the mean time a get spends in progress, from Little's law: the average
//! number of gets in progress divided by the rate they complete. With a fixed number of
//! tasks looping on gets it falls as throughput rises; with requests arriving at a fixed
//! rate it is the latency they see. Either way, lower is better.
//!
//! The chooser stays on its route for a while (exploit), then tries the other for a few
//! epochs (probe), the first of which is not counted (batches of the previous route are
//! still finishing), and keeps whichever measured better. A route the probe found much
//! worse is tried again less often, so a clear winner costs little.

/// How a get goes out while enough gets are in progress to coalesce them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Joins the next `MGET`.
    Coalesce,
    /// A plain `GET`, as under low load.
    Alone,
}

impl Route {
    fn other(self) -> Route {
        match self {
            Route::Coalesce => Route::Alone,
            Route::Alone => Route::Coalesce,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Epochs on the better route between two probes: a probe every 16 to 128 epochs.
const STAY_MIN: u32 = 16;
const STAY_MAX: u32 = 128;
/// Measured epochs of a probe, after one that settles.
const PROBE_EPOCHS: u32 = 2;
/// How much better the other route must measure to be taken.
const SWITCH_MARGIN: f64 = 0.05;
/// How much worse a probe must measure for the next probe to come later.
const CLEAR_LOSS: f64 = 0.20;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// On the better route; `left` epochs before the next probe.
    Exploit { left: u32 },
    /// Just switched; this epoch is not counted. Then probe, or exploit.
    Settle { then_probe: bool },
    /// On the other route, `left` more epochs to measure.
    Probe { left: u32 },
}

/// Picks the route of gets under load, epoch by epoch.
#[derive(Debug)]
pub(crate) struct Chooser {
    route: Route,
    phase: Phase,
    /// Each route's mean time in progress per get, seconds: a moving average of its
    /// recent epochs (the probed route's restarts at each probe).
    measured: [Option<f64>; 2],
    /// Epochs to exploit before the next probe.
    stay: u32,
}

impl Default for Chooser {
    fn default() -> Self {
        Chooser {
            route: Route::Coalesce,
            phase: Phase::Exploit { left: STAY_MIN },
            measured: [None, None],
            stay: STAY_MIN,
        }
    }
}

impl Chooser {
    /// The route gets under load take now.
    pub(crate) fn route(&self) -> Route {
        self.route
    }

    /// Ends an epoch in which gets spent `mean` seconds in progress on average (`None`
    /// when too few were in progress to coalesce: nothing is learnt and nothing
    /// changes); returns the route for the next one.
    pub(crate) fn epoch(&mut self, mean: Option<f64>) -> Route {
        let Some(mean) = mean.filter(|m| m.is_finite() && *m > 0.0) else {
            return self.route;
        };
        match self.phase {
            Phase::Settle { then_probe: true } => {
                self.measured[self.route.index()] = None;
                self.phase = Phase::Probe { left: PROBE_EPOCHS };
            }
            Phase::Settle { then_probe: false } => {
                self.phase = Phase::Exploit { left: self.stay };
            }
            Phase::Exploit { left } => {
                self.record(mean);
                self.phase = if left > 1 {
                    Phase::Exploit { left: left - 1 }
                } else {
                    self.route = self.route.other();
                    Phase::Settle { then_probe: true }
                };
            }
            Phase::Probe { left } => {
                self.record(mean);
                if left > 1 {
                    self.phase = Phase::Probe { left: left - 1 };
                } else {
                    self.decide();
                }
            }
        }
        self.route
    }

    fn record(&mut self, mean: f64) {
        let slot = &mut self.measured[self.route.index()];
        *slot = Some(match *slot {
            Some(before) => (before + mean) / 2.0,
            None => mean,
        });
    }

    /// After a probe: stay on the probed route if it measured better, else go back.
    fn decide(&mut self) {
        let probed = self.route;
        let kept = probed.other();
        let (Some(p), Some(k)) = (self.measured[probed.index()], self.measured[kept.index()])
        else {
            // Nothing to compare against: go back to where we were.
            self.route = kept;
            self.phase = Phase::Settle { then_probe: false };
            return;
        };
        if p < k * (1.0 - SWITCH_MARGIN) {
            self.stay = STAY_MIN;
            self.phase = Phase::Exploit { left: self.stay };
        } else {
            self.stay = if p > k * (1.0 + CLEAR_LOSS) {
                (self.stay * 2).min(STAY_MAX)
            } else {
                STAY_MIN
            };
            self.route = kept;
            self.phase = Phase::Settle { then_probe: false };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `epochs` epochs where each route measures what `cost` says; returns the
    /// share of epochs spent on each route, coalescing first.
    fn run(chooser: &mut Chooser, epochs: usize, cost: impl Fn(Route) -> f64) -> (f64, f64) {
        let mut on = [0usize; 2];
        for _ in 0..epochs {
            let route = chooser.route();
            on[route.index()] += 1;
            chooser.epoch(Some(cost(route)));
        }
        (on[0] as f64 / epochs as f64, on[1] as f64 / epochs as f64)
    }

    #[test]
    fn it_starts_by_coalescing() {
        assert_eq!(Chooser::default().route(), Route::Coalesce);
    }

    #[test]
    fn where_coalescing_pays_it_coalesces_and_probes_less_and_less() {
        let mut chooser = Chooser::default();
        let cost = |r| if r == Route::Coalesce { 100e-6 } else { 200e-6 };
        let (coalescing, alone) = run(&mut chooser, 2_000, cost);
        assert_eq!(chooser.route(), Route::Coalesce);
        // Probes back off to one every STAY_MAX epochs: ~3 of 131 epochs alone.
        assert!(alone < 0.04, "{coalescing:.3} coalescing, {alone:.3} alone");
    }

    #[test]
    fn where_coalescing_loses_it_goes_alone() {
        let mut chooser = Chooser::default();
        let cost = |r| if r == Route::Coalesce { 150e-6 } else { 100e-6 };
        let (coalescing, alone) = run(&mut chooser, 2_000, cost);
        assert_eq!(chooser.route(), Route::Alone);
        assert!(
            coalescing < 0.04,
            "{coalescing:.3} coalescing, {alone:.3} alone"
        );
    }

    #[test]
    fn it_follows_the_load_when_the_better_route_changes() {
        let mut chooser = Chooser::default();
        run(&mut chooser, 1_000, |r| {
            if r == Route::Coalesce { 100e-6 } else { 300e-6 }
        });
        assert_eq!(chooser.route(), Route::Coalesce);
        // The load changes: now going alone is better. Within two probe periods at the
        // longest interval, the chooser has moved.
        let (_, alone) = run(&mut chooser, 2 * (STAY_MAX as usize + 4), |r| {
            if r == Route::Coalesce { 300e-6 } else { 100e-6 }
        });
        assert_eq!(chooser.route(), Route::Alone);
        assert!(alone > 0.3, "{alone:.3} alone after the change");
    }

    #[test]
    fn a_difference_within_the_margin_does_not_flip_the_route() {
        let mut chooser = Chooser::default();
        let (coalescing, _) = run(&mut chooser, 1_000, |r| {
            if r == Route::Coalesce { 100e-6 } else { 97e-6 }
        });
        assert_eq!(chooser.route(), Route::Coalesce);
        assert!(coalescing > 0.8, "{coalescing:.3} coalescing");
    }

    #[test]
    fn epochs_under_low_load_change_nothing() {
        let mut chooser = Chooser::default();
        for _ in 0..10_000 {
            assert_eq!(chooser.epoch(None), Route::Coalesce);
        }
        assert_eq!(chooser.phase, Phase::Exploit { left: STAY_MIN });
    }

    /// Exploits at `kept` seconds per get until the probe, settles, then probes with the
    /// epochs `probe`; returns the chooser after the decision.
    fn probe_with(kept: f64, probe: &[f64]) -> Chooser {
        let mut chooser = Chooser::default();
        for _ in 0..STAY_MIN {
            chooser.epoch(Some(kept));
        }
        assert_eq!(chooser.phase, Phase::Settle { then_probe: true });
        chooser.epoch(Some(kept));
        for &mean in probe {
            chooser.epoch(Some(mean));
        }
        chooser
    }

    #[test]
    fn figures_that_are_not_a_time_change_nothing() {
        let mut chooser = Chooser::default();
        for figure in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(chooser.epoch(Some(figure)), Route::Coalesce);
            assert_eq!(chooser.phase, Phase::Exploit { left: STAY_MIN }, "{figure}");
        }
        assert_eq!(chooser.measured, [None, None]);
    }

    #[test]
    fn a_probe_measures_every_one_of_its_epochs() {
        // Alone measures 150 then 10 µs: 80 on average, better than coalescing's 100. A
        // probe that stopped after its first epoch would go back to coalescing.
        let chooser = probe_with(100e-6, &[150e-6, 10e-6]);
        assert_eq!(chooser.route(), Route::Alone);
        assert_eq!(chooser.phase, Phase::Exploit { left: STAY_MIN });
    }

    #[test]
    fn a_probe_exactly_at_the_margin_does_not_switch() {
        let kept = 100e-6;
        let at_margin = kept * (1.0 - SWITCH_MARGIN);
        let chooser = probe_with(kept, &[at_margin, at_margin]);
        assert_eq!(chooser.route(), Route::Coalesce);
    }

    #[test]
    fn only_a_clear_loss_spaces_the_probes_out() {
        let kept = 100e-6;
        let clear = probe_with(kept, &[kept * 1.5, kept * 1.5]);
        assert_eq!(clear.stay, 2 * STAY_MIN, "a 50% loss doubles the stay");
        let slight = probe_with(kept, &[kept * 1.1, kept * 1.1]);
        assert_eq!(slight.stay, STAY_MIN, "a 10% loss keeps probing as often");
        let at_bound = kept * (1.0 + CLEAR_LOSS);
        let bound = probe_with(kept, &[at_bound, at_bound]);
        assert_eq!(
            bound.stay, STAY_MIN,
            "exactly at the bound is not a clear loss"
        );
        for chooser in [clear, slight, bound] {
            assert_eq!(chooser.route(), Route::Coalesce);
        }
    }

    #[test]
    fn the_settling_epoch_after_a_switch_is_not_counted() {
        let mut chooser = Chooser::default();
        for _ in 0..STAY_MIN {
            chooser.epoch(Some(100e-6));
        }
        assert_eq!(chooser.route(), Route::Alone);
        // The first epoch alone still carries coalesced batches: a terrible figure
        // that must not count against going alone.
        chooser.epoch(Some(10.0));
        chooser.epoch(Some(50e-6));
        chooser.epoch(Some(50e-6));
        assert_eq!(chooser.route(), Route::Alone, "alone measured 2x better");
    }
}
