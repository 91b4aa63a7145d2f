//! Synthetic stacks shared by the store benchmarks: paths in a call tree, so they share
//! prefixes the way real stacks do, from a deterministic generator.

use baton_model::{Frame, FrameKind};

pub const DISTINCT_STACKS: usize = 20_000;
pub const FUNCTIONS: usize = 2_000;
pub const DEPTH: usize = 24;
pub const BRANCH: usize = 3;
pub const COMMS: usize = 200;
pub const DAY_MS: i64 = 86_400_000;

/// A small deterministic generator, so every run stores the same rows.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// `DISTINCT_STACKS` stacks of `DEPTH` frames, leaf first; each frame picks one of `BRANCH`
/// callees of its caller among `FUNCTIONS` functions.
pub fn stacks() -> Vec<Vec<Frame>> {
    let mut rng = Lcg(42);
    (0..DISTINCT_STACKS)
        .map(|_| {
            let mut caller = 0usize;
            let mut frames: Vec<Frame> = (0..DEPTH)
                .map(|_| {
                    let pick = (rng.next() as usize) % BRANCH;
                    let f = (caller.wrapping_mul(31).wrapping_add(pick * 7919 + 1)) % FUNCTIONS;
                    caller = f;
                    Frame {
                        kind: FrameKind::User,
                        function: Some(format!("function_{f}")),
                        module: "/usr/bin/synthetic".into(),
                        build_id: Some("0123456789abcdef".into()),
                        address: f as u64 * 64,
                        file: None,
                        line: None,
                    }
                })
                .collect();
            frames.reverse();
            frames
        })
        .collect()
}
