//! Fuzz entry points: plain functions over untrusted bytes, driven by the
//! cargo-fuzz targets in `init/fuzz` and, with random and mutated inputs,
//! by the normal test suite (`tests/fuzz.rs`). They must never panic; each
//! also checks the invariants its parser promises.
//!
//! A broken invariant is reported the way fuzzers expect, by panicking;
//! these functions never run inside PID 1.
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use crate::cmdline::parse_cmdline;
use crate::logging::buffers::LineSplitter;
use crate::manifest;
use crate::modules::ModuleIndex;
use crate::order;
use crate::supervisor::Supervisor;
use crate::units::{HumanDuration, parse_duration, parse_size};

/// The images a fuzzed manifest may name.
const IMAGES: &[&str] = &["web", "db", "busybox"];

/// Manifest bytes → validation. A manifest that validates must give a
/// supervisor (acyclic, known dependencies) and a start order that is a
/// permutation with every dependency first.
pub fn fuzz_manifest(data: &[u8]) {
    let images: Vec<String> = IMAGES.iter().map(|s| (*s).to_owned()).collect();
    let Ok(m) = manifest::parse(data, &images) else {
        return;
    };
    let order = order::start_order(&m.services)
        .unwrap_or_else(|e| panic!("validated manifest has no order: {e}"));
    let mut seen = vec![false; m.services.len()];
    for &i in &order {
        let s = &m.services[i];
        for dep in &s.depends_on {
            let j = m
                .services
                .iter()
                .position(|x| &x.name == dep)
                .unwrap_or_else(|| panic!("unknown dep {dep}"));
            assert!(seen[j], "{} starts before its dependency {dep}", s.name);
        }
        assert!(!seen[i], "{} twice in the order", s.name);
        seen[i] = true;
    }
    assert!(seen.iter().all(|s| *s));
    if let Err(e) = Supervisor::new(m.tasks, m.services) {
        panic!("validated manifest refused by the supervisor: {e}");
    }
}

/// A kernel command line: any text, never a panic.
pub fn fuzz_cmdline(data: &[u8]) {
    let opts = parse_cmdline(&String::from_utf8_lossy(data));
    if let Some(path) = &opts.manifest {
        assert!(path.is_absolute());
    }
}

/// `modules.dep` text and the module names asked for (one per line of the
/// second half of the input).
pub fn fuzz_modules(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mid = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let (dep, wanted) = text.split_at(mid);
    let Ok(index) = ModuleIndex::parse(dep, "") else {
        return;
    };
    let wanted: Vec<String> = wanted.lines().map(str::to_owned).collect();
    if let Ok(order) = index.load_order(&wanted) {
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            order.len(),
            "a module file twice in {order:?}"
        );
    }
}

/// Pipe reads: the first byte picks the line limit and the read sizes.
/// Every emitted line is at most the limit and holds no newline.
pub fn fuzz_lines(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(first % 64) + 1;
    let chunk = usize::from(first / 64) + 1;
    let mut splitter = LineSplitter::new(max);
    let mut check = |line: &[u8], _cut: bool| {
        assert!(line.len() <= max, "line of {} bytes over {max}", line.len());
        assert!(!line.contains(&b'\n'));
    };
    for piece in rest.chunks(chunk) {
        splitter.feed(piece, &mut check);
    }
    splitter.finish(&mut check);
}

/// Durations and sizes; a parsed duration prints back to itself.
pub fn fuzz_units(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(d) = parse_duration(&text) {
        let printed = HumanDuration(d).to_string();
        assert_eq!(
            parse_duration(&printed),
            Ok(Duration::from_millis(d.as_millis() as u64)),
            "{printed}"
        );
    }
    let _ = parse_size(&text);
}
