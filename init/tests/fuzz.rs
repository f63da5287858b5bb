//! The fuzz entry points of `berth_init::fuzz`, fed in the normal test
//! suite with deterministic pseudo-random bytes and with mutations of real
//! inputs (the example manifest, a kernel command line, a modules.dep).
//! Each entry point panics on a broken invariant; none may panic otherwise.

use berth_init::fuzz;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A seed mutated a few times: byte flips, deletions, duplications,
/// insertions of interesting tokens, truncation.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"null",
        b"0",
        b"-1",
        b"1e400",
        b"\"depends_on\":[\"web\"]",
        b"\"0ms\"",
        b"\"99999999999999999999h\"",
        b"\xff",
        b"\n",
        b" ",
        b"=",
        b".ko",
        b"berth.",
    ];
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(5) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            3 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + rng.below(32)).min(data.len());
                let piece = data[start..end].to_vec();
                data.splice(at..at, piece);
            }
            _ => data.truncate(at),
        }
    }
    data
}

const MANIFEST: &[u8] = include_bytes!("../examples/manifest.json");
const CMDLINE: &[u8] = b"BOOT_IMAGE=/vmlinuz console=ttyS0 berth.manifest=/etc/m.json \"berth.log=debug\" berth.on_fatal=reboot";
const MODULES: &[u8] = b"kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko:\n\
                         kernel/d-e.ko.zst:\nkernel/x.ko: kernel/y.ko\nkernel/y.ko: kernel/x.ko\n\na\nd_e\nc\nx\n";

fn drive(name: &str, seed: &[u8], rounds: usize, f: fn(&[u8])) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    f(seed);
    f(&[]);
    for round in 0..rounds {
        let input = if round % 4 == 0 {
            {
                let len = rng.below(256);
                rng.bytes(len)
            }
        } else {
            mutate(&mut rng, seed)
        };
        let result = std::panic::catch_unwind(|| f(&input));
        assert!(
            result.is_ok(),
            "{name} panicked on round {round}, input {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

#[test]
fn manifest_parser_never_panics() {
    drive("manifest", MANIFEST, 3000, fuzz::fuzz_manifest);
}

#[test]
fn cmdline_parser_never_panics() {
    drive("cmdline", CMDLINE, 3000, fuzz::fuzz_cmdline);
}

#[test]
fn modules_dep_parser_never_panics() {
    drive("modules", MODULES, 3000, fuzz::fuzz_modules);
}

#[test]
fn line_splitter_keeps_its_bounds() {
    let mut seed = vec![7u8];
    seed.extend_from_slice(b"short\nmuch longer line than seven bytes\n\r\n\npartial");
    drive("lines", &seed, 3000, fuzz::fuzz_lines);
}

#[test]
fn units_parse_and_print_back() {
    drive("units", b"1m30s", 3000, fuzz::fuzz_units);
}
