//! Memory read bandwidth of this machine, the ceiling of token-by-token decoding: a decode step
//! reads every weight once, so tok/s ≤ bandwidth ÷ bytes read per token.
//!
//! Reads a 1 GiB buffer (far beyond any last-level cache) with 1 and 2 threads, each summing
//! its share with vector loads, and prints the median of 7 passes
//! in GB/s (10⁹ bytes). `cargo bench --bench bandwidth` (or `--profile dev`: dependencies do
//! not matter here, but this crate's bench target must be optimized, as `bench` is).

use std::time::Instant;

const BYTES: usize = 1 << 30;
const PASSES: usize = 7;

/// Integer adds may be reordered, so the compiler turns this into vector loads and adds.
fn sum(xs: &[u64]) -> u64 {
    xs.iter().fold(0, |a, &v| a.wrapping_add(v))
}

fn main() {
    let buf: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let features = cpu_features();
    println!("CPU: {features}");
    for threads in [1usize, 2] {
        let mut rates = Vec::with_capacity(PASSES);
        let mut check = 0u64;
        for _ in 0..PASSES {
            let start = Instant::now();
            let part = buf.len().div_ceil(threads);
            check = std::thread::scope(|s| {
                let hs: Vec<_> = buf.chunks(part).map(|c| s.spawn(move || sum(c))).collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap_or(0))
                    .fold(0, u64::wrapping_add)
            });
            rates.push(BYTES as f64 / start.elapsed().as_secs_f64() / 1e9);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{threads} thread(s): median {:.1} GB/s (min {:.1}, max {:.1}; checksum {check})",
            rates[PASSES / 2],
            rates[0],
            rates[PASSES - 1]
        );
    }
}

/// The CPU's vector features, as the benchmark tables name them.
fn cpu_features() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut f: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.starts_with("avx"))
                .collect()
        })
        .unwrap_or_default();
    f.sort_unstable();
    f.dedup();
    if f.is_empty() {
        "no AVX".into()
    } else {
        f.join(" ")
    }
}
