//! Calibration: the inputs D is measured on (`inputs`), the model split into sessions
//! (`parts`), and the engine that executes any plan and scores it (`engine`, with its stream
//! `cache`, and the per-row `measure`s D is made of).

pub mod cache;
pub mod config;
pub mod engine;
pub mod inputs;
pub mod measure;
pub mod parts;

pub use config::CalibConfig;
pub use engine::{Engine, EngineOptions, EngineStats, Outcome, Score};
pub use inputs::{CalibSet, PromptHalf};

/// "123", "512K", "64M", "4G" (binary units).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, 'k' | 'K') => (&t[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&t[..i], 1 << 20),
        (i, 'g' | 'G') => (&t[..i], 1 << 30),
        (i, 't' | 'T') => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// A quarter of MemAvailable: the machine is shared with ONNX Runtime's own buffers and the
/// weights; 1 GiB when /proc/meminfo is not readable.
pub fn default_cache_mem() -> u64 {
    crate::runtime::available_memory().map_or(1 << 30, |b| b / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_parse() {
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("4g"), Some(4 << 30));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("x"), None);
        assert!(default_cache_mem() > 0);
    }
}
