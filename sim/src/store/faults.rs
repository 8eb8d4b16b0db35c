//! How hostile storage is: fault profiles (switched between steps) and the counters of what
//! was injected.

/// How hostile storage is for a while (the world switches profiles between steps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultProfile {
    /// Name, for the trace and the report.
    pub name: &'static str,
    /// Probability of a transient error before the call.
    pub error: f64,
    /// Probability that a write (put, delete, copy) takes effect and its answer is lost.
    pub lost_answer: f64,
    /// Probability that a put stores a truncated object, then fails.
    pub partial: f64,
    /// Probability that a put lands late, in a task of its own.
    pub late: f64,
    /// Probability that a download stream is cut mid-body.
    pub cut: f64,
    /// Latency of every call, ms (inclusive range).
    pub latency_ms: (u64, u64),
    /// Probability of a stall on top of the latency.
    pub spike: f64,
    /// Length of a stall, ms.
    pub spike_ms: (u64, u64),
    /// Delay of a late landing, ms.
    pub late_ms: (u64, u64),
    /// Extra probability of a transient error (and as much of a lost answer) on a checkpoint's
    /// `_metadata`: the commit point, where doubt matters most.
    pub metadata_error: f64,
}

impl FaultProfile {
    /// No fault, short latency.
    pub const CALM: FaultProfile = FaultProfile {
        name: "calm",
        error: 0.0,
        lost_answer: 0.0,
        partial: 0.0,
        late: 0.0,
        cut: 0.0,
        latency_ms: (1, 20),
        spike: 0.0,
        spike_ms: (0, 0),
        late_ms: (0, 0),
        metadata_error: 0.0,
    };

    /// Some transient errors of every kind; most are absorbed by retries.
    pub const FLAKY: FaultProfile = FaultProfile {
        name: "flaky",
        error: 0.06,
        lost_answer: 0.04,
        partial: 0.02,
        late: 0.03,
        cut: 0.03,
        latency_ms: (1, 40),
        spike: 0.01,
        spike_ms: (200, 2_000),
        late_ms: (5, 800),
        metadata_error: 0.10,
    };

    /// Long stalls and late writes: checkpoints time out, commits take long.
    pub const SLOW: FaultProfile = FaultProfile {
        name: "slow",
        error: 0.02,
        lost_answer: 0.02,
        partial: 0.0,
        late: 0.10,
        cut: 0.0,
        latency_ms: (10, 300),
        spike: 0.05,
        spike_ms: (1_000, 6_000),
        late_ms: (100, 12_000),
        metadata_error: 0.05,
    };

    /// Everything often: retries run out, commits end in doubt.
    pub const CHAOS: FaultProfile = FaultProfile {
        name: "chaos",
        error: 0.25,
        lost_answer: 0.15,
        partial: 0.05,
        late: 0.08,
        cut: 0.08,
        latency_ms: (1, 100),
        spike: 0.03,
        spike_ms: (500, 5_000),
        late_ms: (5, 6_000),
        metadata_error: 0.35,
    };

    /// Every profile.
    pub const ALL: [FaultProfile; 4] = [Self::CALM, Self::FLAKY, Self::SLOW, Self::CHAOS];

    /// The longest one call can take under any profile: the longest latency, stall and late
    /// landing together (a late put's caller waits for it to land).
    pub fn longest_call() -> std::time::Duration {
        let ms = Self::ALL
            .iter()
            .map(|p| p.latency_ms.1 + p.spike_ms.1 + p.late_ms.1)
            .max()
            .unwrap_or(0);
        std::time::Duration::from_millis(ms)
    }
}

/// Counters of what the store did to its callers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Calls that took effect (or were refused) in total.
    pub effects: u64,
    /// Transient errors before the call.
    pub error: u64,
    /// Writes whose answer was lost.
    pub lost_answer: u64,
    /// Truncated writes.
    pub partial: u64,
    /// Late landings (scheduled).
    pub late: u64,
    /// Cut download streams.
    pub cut: u64,
    /// Stalls.
    pub spike: u64,
    /// Calls refused because their process had crashed.
    pub crashed: u64,
    /// Calls refused by a rule (a lost lease renewal).
    pub refused: u64,
}

impl FaultCounts {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &FaultCounts) {
        self.effects += other.effects;
        self.error += other.error;
        self.lost_answer += other.lost_answer;
        self.partial += other.partial;
        self.late += other.late;
        self.cut += other.cut;
        self.spike += other.spike;
        self.crashed += other.crashed;
        self.refused += other.refused;
    }

    /// Faults injected (stalls and refusals of a dead process not counted).
    pub fn injected(&self) -> u64 {
        self.error + self.lost_answer + self.partial + self.late + self.cut + self.refused
    }
}
