//! The TOML profile file: another machine's facts, so its plan can be reproduced.
//!
//! ```toml
//! name = "build server"
//! isa = "avx512"                      # avx2 | avx512
//! features = ["avx512_vnni"]          # optional; added to what the isa implies
//! physical_cores = 16
//! logical_cpus = 32                   # optional; defaults to physical_cores
//!
//! [cache]
//! l1d = "48KiB"                       # bytes as an integer, or with KiB/MiB
//! l2 = "1MiB"
//! l3 = "32MiB"
//! line = 64                           # optional; defaults to 64
//!
//! [kernel_isa]                        # optional: per kernel class, forced
//! loops = "avx2"                      # (no timing at first use, see `tune`)
//! matmul = "avx512"
//! ```
//!
//! Every problem is reported with the dotted name of the field it concerns.

use super::{
    CacheHierarchy, CacheLevel, CpuFeatures, DeviceProfile, Isa, KernelClass, KernelIsas, ProfileSource,
};
use thiserror::Error;
use toml::{Table, Value};

/// Why a profile could not be built.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProfileError {
    /// A field is missing, mistyped or implausible.
    #[error("device profile {origin}: field `{field}`: {problem}")]
    Field { origin: String, field: String, problem: String },
    /// The text is not TOML at all.
    #[error("device profile {origin}: not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("cannot read device profile {path}: {message}")]
    Io { path: String, message: String },
    #[error("unknown device preset `{name}` (known: {known})")]
    UnknownPreset { name: String, known: String },
    /// Detection found a CPU this compiler cannot generate code for.
    #[error("this CPU is not supported: {0}")]
    UnsupportedCpu(String),
}

struct Fields<'a> {
    origin: &'a str,
}

impl Fields<'_> {
    fn err(&self, field: &str, problem: impl Into<String>) -> ProfileError {
        ProfileError::Field {
            origin: self.origin.to_string(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    fn reject_unknown(&self, table: &Table, prefix: &str, known: &[&str]) -> Result<(), ProfileError> {
        match table.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(self.err(
                &format!("{prefix}{k}"),
                format!("unknown field (expected one of: {})", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn string<'t>(&self, table: &'t Table, key: &str, field: &str) -> Result<Option<&'t str>, ProfileError> {
        match table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(field, format!("expected a string, found {}", other.type_str()))),
        }
    }

    fn count(&self, table: &Table, key: &str, field: &str) -> Result<Option<usize>, ProfileError> {
        match table.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) if *i > 0 => Ok(Some(*i as usize)),
            Some(Value::Integer(i)) => Err(self.err(field, format!("must be positive, found {i}"))),
            Some(other) => Err(self.err(field, format!("expected an integer, found {}", other.type_str()))),
        }
    }

    fn bytes(&self, table: &Table, key: &str, field: &str) -> Result<Option<usize>, ProfileError> {
        match table.get(key) {
            Some(Value::String(s)) => parse_size(s).map(Some).ok_or_else(|| {
                self.err(field, format!("`{s}` is not a size (use bytes, or e.g. \"48KiB\", \"1MiB\")"))
            }),
            _ => self.count(table, key, field),
        }
    }
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits.parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale).filter(|&b| b > 0)
}

pub(super) fn parse(text: &str, origin: &str) -> Result<DeviceProfile, ProfileError> {
    let f = Fields { origin };
    let root: Table = text.parse().map_err(|e: toml::de::Error| ProfileError::Syntax {
        origin: origin.to_string(),
        message: e.message().to_string(),
    })?;
    f.reject_unknown(
        &root,
        "",
        &["name", "isa", "features", "physical_cores", "logical_cpus", "cache", "kernel_isa"],
    )?;

    let isa_name = f.string(&root, "isa", "isa")?.ok_or_else(|| f.err("isa", "missing (avx2 or avx512)"))?;
    let isa = Isa::from_name(isa_name)
        .ok_or_else(|| f.err("isa", format!("`{isa_name}` is not one of: avx2, avx512")))?;
    let mut features = CpuFeatures::implied_by(isa);
    match root.get("features") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let field = format!("features[{i}]");
                let name = item.as_str().ok_or_else(|| f.err(&field, "expected a feature name string"))?;
                let flag = features.flag_mut(name).ok_or_else(|| {
                    f.err(
                        &field,
                        format!("unknown feature `{name}` (known: {})", CpuFeatures::NAMES.join(", ")),
                    )
                })?;
                *flag = true;
            }
        }
        Some(other) => {
            return Err(f.err("features", format!("expected an array, found {}", other.type_str())))
        }
    }
    let physical_cores = f
        .count(&root, "physical_cores", "physical_cores")?
        .ok_or_else(|| f.err("physical_cores", "missing"))?;
    let logical_cpus = f.count(&root, "logical_cpus", "logical_cpus")?.unwrap_or(physical_cores);

    let cache = match root.get("cache") {
        Some(Value::Table(t)) => t,
        Some(other) => return Err(f.err("cache", format!("expected a table, found {}", other.type_str()))),
        None => return Err(f.err("cache", "missing [cache] table")),
    };
    f.reject_unknown(cache, "cache.", &["l1d", "l2", "l3", "line"])?;
    let line_bytes = f.bytes(cache, "line", "cache.line")?.unwrap_or(64);
    let level = |key: &str, shared_by: usize| -> Result<CacheLevel, ProfileError> {
        let field = format!("cache.{key}");
        let size_bytes = f.bytes(cache, key, &field)?.ok_or_else(|| f.err(&field, "missing"))?;
        Ok(CacheLevel { size_bytes, line_bytes, shared_by })
    };
    let smt = (logical_cpus / physical_cores).max(1);
    let caches =
        CacheHierarchy { l1d: level("l1d", smt)?, l2: level("l2", smt)?, l3: level("l3", logical_cpus)? };

    let mut kernel_isas = KernelIsas::default();
    match root.get("kernel_isa") {
        None => {}
        Some(Value::Table(t)) => {
            let names: Vec<&str> = KernelClass::ALL.iter().map(|c| c.name()).collect();
            f.reject_unknown(t, "kernel_isa.", &names)?;
            for class in KernelClass::ALL {
                let field = format!("kernel_isa.{class}");
                if let Some(name) = f.string(t, class.name(), &field)? {
                    let choice = Isa::from_name(name)
                        .ok_or_else(|| f.err(&field, format!("`{name}` is not one of: avx2, avx512")))?;
                    if !features.supports(choice) {
                        return Err(
                            f.err(&field, format!("`{choice}` needs features this profile does not have"))
                        );
                    }
                    *kernel_isas.slot(class) = Some(choice);
                }
            }
        }
        Some(other) => {
            return Err(f.err("kernel_isa", format!("expected a table, found {}", other.type_str())))
        }
    }

    let name = f.string(&root, "name", "name")?.unwrap_or(origin).to_string();
    DeviceProfile {
        name,
        source: ProfileSource::File(origin.to_string()),
        isa,
        features,
        caches,
        physical_cores,
        logical_cpus,
        kernel_isas,
    }
    .validate()
}

pub(super) fn render(p: &DeviceProfile) -> String {
    let c = &p.caches;
    let features: Vec<String> = p.features.enabled().iter().map(|n| format!("\"{n}\"")).collect();
    let text = format!(
        "name = {name:?}\nisa = \"{isa}\"\nfeatures = [{features}]\nphysical_cores = {cores}\nlogical_cpus = {logical}\n\n[cache]\nl1d = {l1}\nl2 = {l2}\nl3 = {l3}\nline = {line}\n",
        name = p.name,
        isa = p.isa,
        features = features.join(", "),
        cores = p.physical_cores,
        logical = p.logical_cpus,
        l1 = c.l1d.size_bytes,
        l2 = c.l2.size_bytes,
        l3 = c.l3.size_bytes,
        line = c.l1d.line_bytes,
    );
    let forced: Vec<String> = KernelClass::ALL
        .iter()
        .filter_map(|&c| p.kernel_isas.get(c).map(|isa| format!("{c} = \"{isa}\"\n")))
        .collect();
    if forced.is_empty() {
        text
    } else {
        format!("{text}\n[kernel_isa]\n{}", forced.concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "box"
isa = "avx512"
features = ["avx512_vnni"]
physical_cores = 8
logical_cpus = 16
[cache]
l1d = "48KiB"
l2 = "1MiB"
l3 = 33554432
"#;

    #[test]
    fn parses_a_complete_file() {
        let p = parse(GOOD, "test").unwrap();
        assert_eq!(p.isa, Isa::Avx512);
        assert!(p.features.avx512_vnni && p.features.avx512bw && !p.features.avx512_bf16);
        assert_eq!(p.caches.l1d.size_bytes, 48 << 10);
        assert_eq!(p.caches.l2.size_bytes, 1 << 20);
        assert_eq!(p.caches.l3.size_bytes, 32 << 20);
        assert_eq!(p.caches.l1d.shared_by, 2);
        assert_eq!((p.physical_cores, p.logical_cpus), (8, 16));
    }

    #[test]
    fn render_round_trips() {
        let p = parse(GOOD, "test").unwrap();
        let again = parse(&p.to_toml(), "test").unwrap();
        assert_eq!(p.caches, again.caches);
        assert_eq!(p.features, again.features);
        assert_eq!(p.isa, again.isa);
        assert_eq!(p.name, again.name);
        let forced = p.with_kernel_isa(KernelClass::Loops, Isa::Avx2).unwrap();
        let again = parse(&forced.to_toml(), "test").unwrap();
        assert_eq!(again.kernel_isas, KernelIsas { loops: Some(Isa::Avx2), matmul: None });
        assert_eq!(
            (again.isa_for(KernelClass::Loops), again.isa_for(KernelClass::Matmul)),
            (Isa::Avx2, Isa::Avx512)
        );
    }

    #[test]
    fn kernel_isa_table_forces_a_class() {
        let p = parse(&format!("{GOOD}\n[kernel_isa]\nmatmul = \"avx2\"\n"), "t").unwrap();
        assert_eq!(p.isa_for(KernelClass::Matmul), Isa::Avx2);
        assert_eq!(p.isa_for(KernelClass::Loops), Isa::Avx512);
        assert_eq!(p.gemm_blocking().nr, 16, "the matmul class's blocking follows its ISA");
        assert_eq!(p.for_kernels(KernelClass::Matmul).num_simd_regs(), 16);
        // A class cannot ask for more than the features give.
        let avx2_box = GOOD.replace("isa = \"avx512\"", "isa = \"avx2\"").replace("[\"avx512_vnni\"]", "[]");
        let (field, problem) = field_of(&format!("{avx2_box}\n[kernel_isa]\nmatmul = \"avx512\"\n"));
        assert_eq!(field, "kernel_isa.matmul");
        assert!(problem.contains("needs features"), "{problem}");
    }

    fn field_of(text: &str) -> (String, String) {
        match parse(text, "t") {
            Err(ProfileError::Field { field, problem, .. }) => (field, problem),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_files_name_the_field() {
        // (text to replace in GOOD, replacement, field the error must name)
        let cases: &[(&str, &str, &str)] = &[
            ("isa = \"avx512\"", "isa = \"neon9\"", "isa"),
            ("isa = \"avx512\"", "isa = 512", "isa"),
            ("isa = \"avx512\"\n", "", "isa"),
            ("l3 = 33554432", "l3 = 33554432\n[kernel_isa]\nloops = \"sse\"", "kernel_isa.loops"),
            ("l3 = 33554432", "l3 = 33554432\n[kernel_isa]\nattention = \"avx2\"", "kernel_isa.attention"),
            ("l1d = \"48KiB\"", "l1d = \"lots\"", "cache.l1d"),
            ("l1d = \"48KiB\"", "l1d = -3", "cache.l1d"),
            ("l2 = \"1MiB\"", "l2 = \"2KiB\"", "cache.l2"),
            ("l2 = \"1MiB\"\n", "", "cache.l2"),
            ("l3 = 33554432", "l3 = true", "cache.l3"),
            ("[cache]", "[cache]\nline = 48", "cache.line"),
            ("[cache]", "[cache]\nlne = 64", "cache.lne"),
            ("[cache]", "colour = 3\n[cache]", "colour"),
            ("physical_cores = 8", "physical_cores = \"eight\"", "physical_cores"),
            ("physical_cores = 8", "physical_cores = 0", "physical_cores"),
            ("logical_cpus = 16", "logical_cpus = 4", "logical_cpus"),
            ("[\"avx512_vnni\"]", "[\"avx512_vnni\", \"avx9000\"]", "features[1]"),
            ("[\"avx512_vnni\"]", "\"avx512_vnni\"", "features"),
        ];
        for (from, to, field) in cases {
            assert!(GOOD.contains(from), "case text {from:?} not in GOOD");
            let (got, problem) = field_of(&GOOD.replacen(from, to, 1));
            assert_eq!(&got, field, "replacing {from:?} by {to:?}: {problem}");
        }
        let (_, problem) = field_of(&GOOD.replace("l2 = \"1MiB\"\n", ""));
        assert_eq!(problem, "missing");
    }

    #[test]
    fn syntax_errors_are_reported_not_panicked() {
        assert!(matches!(parse("isa = [", "t"), Err(ProfileError::Syntax { .. })));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("48KiB"), Some(48 << 10));
        assert_eq!(parse_size("1 MiB"), Some(1 << 20));
        assert_eq!(parse_size("64"), Some(64));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }
}
