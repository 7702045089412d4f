//! Peak resident memory of this process, per cell: the kernel's high-water mark
//! (`VmHWM`), reset by writing `5` to `/proc/self/clear_refs` (Linux only).

/// Resets the high-water mark to the current resident size; false when the
/// kernel does not allow it (the peak then counts from process start).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The high-water mark of resident memory, in MiB; `None` off Linux.
pub fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}
