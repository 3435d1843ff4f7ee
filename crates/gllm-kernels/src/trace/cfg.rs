//! Code discovery: decode a function by following its branches from the entry
//! (its length is not known, and early returns mean the first `ret` is not its
//! end), resolve its calls, and find its loops from back edges.

use super::error::{TraceError, TraceErrorKind};
use super::memory::CodeMemory;
use super::MathOp;
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Formatter, Instruction, IntelFormatter, OpKind};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Most instructions a reference function may have.
const MAX_INSTRUCTIONS: usize = 20_000;

/// A libm function the analyser understands as one trace operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MathFn {
    Exp,
    Log,
    Tanh,
    Sqrt,
    Fma,
    /// `powf` (two arguments).
    Pow,
    /// `fabsf`: the same bits as clearing the sign.
    Fabs,
    Unary(MathOp),
}

impl MathFn {
    fn from_symbol(name: &str) -> Option<MathFn> {
        let base = name.split('@').next().unwrap_or(name);
        let base = base.strip_suffix("_finite").map(|b| b.trim_start_matches('_')).unwrap_or(base);
        Some(match base {
            "expf" | "__expf" => MathFn::Exp,
            "logf" | "__logf" => MathFn::Log,
            "tanhf" => MathFn::Tanh,
            "sqrtf" => MathFn::Sqrt,
            "fmaf" => MathFn::Fma,
            "powf" | "__powf" => MathFn::Pow,
            "fabsf" => MathFn::Fabs,
            "erff" => MathFn::Unary(MathOp::Erf),
            "expm1f" => MathFn::Unary(MathOp::Expm1),
            "log1pf" => MathFn::Unary(MathOp::Log1p),
            "sinf" => MathFn::Unary(MathOp::Sin),
            "cosf" => MathFn::Unary(MathOp::Cos),
            "floorf" => MathFn::Unary(MathOp::Floor),
            "ceilf" => MathFn::Unary(MathOp::Ceil),
            "truncf" => MathFn::Unary(MathOp::Trunc),
            "roundf" => MathFn::Unary(MathOp::Round),
            "rintf" | "nearbyintf" | "roundevenf" => MathFn::Unary(MathOp::RoundEven),
            _ => return None,
        })
    }

    /// Number of f32 arguments (in xmm0, xmm1, …).
    pub fn arity(self) -> usize {
        match self {
            MathFn::Fma => 3,
            MathFn::Pow => 2,
            _ => 1,
        }
    }
}

mod libm {
    extern "C" {
        pub fn expf(x: f32) -> f32;
        pub fn logf(x: f32) -> f32;
        pub fn tanhf(x: f32) -> f32;
        pub fn sqrtf(x: f32) -> f32;
        pub fn fmaf(a: f32, b: f32, c: f32) -> f32;
        pub fn powf(x: f32, y: f32) -> f32;
        pub fn fabsf(x: f32) -> f32;
        pub fn erff(x: f32) -> f32;
        pub fn expm1f(x: f32) -> f32;
        pub fn log1pf(x: f32) -> f32;
        pub fn sinf(x: f32) -> f32;
        pub fn cosf(x: f32) -> f32;
        pub fn floorf(x: f32) -> f32;
        pub fn ceilf(x: f32) -> f32;
        pub fn truncf(x: f32) -> f32;
        pub fn roundf(x: f32) -> f32;
        pub fn rintf(x: f32) -> f32;
        pub fn nearbyintf(x: f32) -> f32;
    }
}

/// Addresses of the libm functions as this process resolves them.
fn known_math_addresses() -> Vec<(u64, MathFn)> {
    let at = |f: *const ()| f as usize as u64;
    let mut known = vec![
        (at(libm::expf as *const ()), MathFn::Exp),
        (at(libm::logf as *const ()), MathFn::Log),
        (at(libm::tanhf as *const ()), MathFn::Tanh),
        (at(libm::sqrtf as *const ()), MathFn::Sqrt),
        (at(libm::fmaf as *const ()), MathFn::Fma),
        (at(libm::powf as *const ()), MathFn::Pow),
        (at(libm::fabsf as *const ()), MathFn::Fabs),
        (at(libm::nearbyintf as *const ()), MathFn::Unary(MathOp::RoundEven)),
    ];
    known.extend(MathOp::ALL.map(|m| (libm_address(Some(m)), MathFn::Unary(m))));
    known
}

/// The exact symbol at `addr`: the dynamic linker's if it exports one,
/// else the local symbol table of the file it was loaded from (Rust
/// binaries carry their own non-exported `floorf`, `roundf`, … from
/// compiler-builtins).
fn symbol_at(addr: u64) -> Option<String> {
    // SAFETY: `Dl_info` is plain old data (pointers and integers): all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only inspects the loader's tables; any address is allowed
    // and `info` is a valid out-pointer.
    let found = unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) };
    if found == 0 {
        return None;
    }
    if !info.dli_sname.is_null() && info.dli_saddr as u64 == addr {
        // SAFETY: dli_sname is a NUL-terminated string owned by the loader.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dli_sname) };
        return Some(name.to_string_lossy().into_owned());
    }
    if info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    let file = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned();
    let (symbols, absolute) = local_symbols(&file)?;
    let key = if absolute { addr } else { addr.wrapping_sub(info.dli_fbase as u64) };
    symbols.get(&key).cloned()
}

/// A file's function symbols by address, and whether those addresses are
/// absolute (a non-PIE executable) rather than relative to the load base.
type SymbolTable = (std::sync::Arc<HashMap<u64, String>>, bool);

/// Function symbols of an ELF file's `.symtab` (cached per file; `None` if
/// the file cannot be read or parsed).
fn local_symbols(file: &str) -> Option<SymbolTable> {
    use object::{Object, ObjectKind, ObjectSymbol, SymbolKind};
    use std::sync::{Arc, Mutex, OnceLock};
    type Cache = Mutex<HashMap<String, Option<SymbolTable>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(file) {
        return hit.clone();
    }
    let read = || -> Option<SymbolTable> {
        let data = std::fs::read(file).ok()?;
        let obj = object::File::parse(&*data).ok()?;
        let absolute = obj.kind() == ObjectKind::Executable;
        let map = obj
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.name().ok()?.to_string())))
            .collect();
        Some((Arc::new(map), absolute))
    };
    let symbols = read();
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(file.to_string(), symbols.clone());
    symbols
}

/// What a call (or tail jump) goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callee {
    Math(MathFn),
    Unknown { target: Option<u64>, symbol: Option<String> },
}

/// A loop found from a back edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoopInfo {
    /// Address of the loop header (the back edge's target).
    pub header: u64,
    /// Basic blocks in the loop body.
    pub blocks: usize,
    /// Nesting depth, 1 for an outermost loop.
    pub depth: usize,
}

/// The decoded, reachable code of one function.
#[derive(Debug)]
pub struct CodeMap {
    pub name: String,
    pub entry: u64,
    instrs: BTreeMap<u64, Instruction>,
    /// Addresses that were reached but could not be decoded, and why.
    bad: HashMap<u64, TraceErrorKind>,
    callees: HashMap<u64, Callee>,
    pub loops: Vec<LoopInfo>,
}

impl CodeMap {
    /// Decodes everything reachable from `entry`.
    pub fn discover(name: &str, entry: u64, memory: &dyn CodeMemory) -> Result<CodeMap, TraceError> {
        let mut map = CodeMap {
            name: name.to_string(),
            entry,
            instrs: BTreeMap::new(),
            bad: HashMap::new(),
            callees: HashMap::new(),
            loops: Vec::new(),
        };
        let math = known_math_addresses();
        let mut work = vec![entry];
        let mut seen = HashSet::new();
        while let Some(addr) = work.pop() {
            if !seen.insert(addr) {
                continue;
            }
            if map.instrs.len() >= MAX_INSTRUCTIONS {
                return Err(map.error(addr, TraceErrorKind::TooMuchCode { limit: MAX_INSTRUCTIONS }));
            }
            let bytes = memory.read_up_to(addr, 15);
            if bytes.is_empty() {
                map.bad.insert(addr, TraceErrorKind::UnreadableCode);
                continue;
            }
            let mut decoder = Decoder::with_ip(64, &bytes, addr, DecoderOptions::NONE);
            let ins = decoder.decode();
            if ins.is_invalid() {
                map.bad.insert(addr, TraceErrorKind::InvalidInstruction);
                continue;
            }
            map.instrs.insert(addr, ins);
            let next = ins.next_ip();
            match ins.flow_control() {
                FlowControl::Next => work.push(next),
                FlowControl::UnconditionalBranch => {
                    if ins.op0_kind() == OpKind::NearBranch64 {
                        work.push(ins.near_branch_target());
                    }
                }
                FlowControl::ConditionalBranch => {
                    if ins.op0_kind() == OpKind::NearBranch64 {
                        work.push(ins.near_branch_target());
                    }
                    work.push(next);
                }
                FlowControl::IndirectBranch => {
                    // `jmp [rip+slot]` is a tail call through the GOT.
                    if ins.is_ip_rel_memory_operand() {
                        let callee = resolve(memory.read_u64(ins.ip_rel_memory_address()), memory, &math);
                        map.callees.insert(addr, callee);
                    }
                }
                FlowControl::Call | FlowControl::IndirectCall => {
                    let target = if ins.op0_kind() == OpKind::NearBranch64 {
                        Some(ins.near_branch_target())
                    } else if ins.is_ip_rel_memory_operand() {
                        memory.read_u64(ins.ip_rel_memory_address())
                    } else {
                        None
                    };
                    if target.is_none() && ins.op0_kind() == OpKind::Register {
                        // Resolved when executed, from the register's value.
                        work.push(next);
                        continue;
                    }
                    let callee = resolve(target, memory, &math);
                    // Unknown callees (panics, mostly) may not return: stop here.
                    if matches!(callee, Callee::Math(_)) {
                        work.push(next);
                    }
                    map.callees.insert(addr, callee);
                }
                FlowControl::Return | FlowControl::Interrupt | FlowControl::Exception => {}
                FlowControl::XbeginXabortXend => {
                    map.bad.insert(addr, TraceErrorKind::UnsupportedInstruction);
                }
            }
        }
        if map.instrs.is_empty() {
            let kind = map.bad.remove(&entry).unwrap_or(TraceErrorKind::UnreadableCode);
            return Err(map.error(entry, kind));
        }
        map.loops = find_loops(&map);
        Ok(map)
    }

    /// The instruction at `addr`, or the error explaining why there is none.
    pub fn at(&self, addr: u64) -> Result<&Instruction, TraceError> {
        if let Some(i) = self.instrs.get(&addr) {
            return Ok(i);
        }
        let kind = self.bad.get(&addr).cloned().unwrap_or(TraceErrorKind::UnreadableCode);
        Err(self.error(addr, kind))
    }

    /// How the call or tail jump at `addr` was resolved.
    pub fn callee(&self, addr: u64) -> Option<&Callee> {
        self.callees.get(&addr)
    }

    /// Reachable instructions in address order.
    pub fn instructions(&self) -> impl Iterator<Item = &Instruction> {
        self.instrs.values()
    }

    /// Intel-syntax disassembly with call annotations, one line per instruction.
    pub fn disassembly(&self) -> String {
        let mut out = String::new();
        let mut fmt = IntelFormatter::new();
        fmt.options_mut().set_first_operand_char_index(8);
        let headers: HashSet<u64> = self.loops.iter().map(|l| l.header).collect();
        for ins in self.instrs.values() {
            let mut text = String::new();
            fmt.format(ins, &mut text);
            let mark = if headers.contains(&ins.ip()) { "loop→" } else { "" };
            out.push_str(&format!("{mark:>6} +{:04x}  {text}", ins.ip() - self.entry));
            if let Some(c) = self.callees.get(&ins.ip()) {
                out.push_str(&match c {
                    Callee::Math(m) => format!("    ; libm {m:?}"),
                    Callee::Unknown { symbol: Some(s), .. } => format!("    ; {s}"),
                    Callee::Unknown { .. } => "    ; unknown".to_string(),
                });
            }
            out.push('\n');
        }
        out
    }

    /// An error at `addr`, with the instruction text when decodable.
    pub fn error(&self, addr: u64, kind: TraceErrorKind) -> TraceError {
        TraceError {
            function: self.name.clone(),
            address: addr,
            instruction: self.instrs.get(&addr).map(format_instr),
            kind,
        }
    }
}

pub fn format_instr(ins: &Instruction) -> String {
    let mut text = String::new();
    IntelFormatter::new().format(ins, &mut text);
    text
}

/// Resolves a call target known only at run time (e.g. `call rbx`).
pub fn resolve_target(target: u64, memory: &dyn CodeMemory) -> Callee {
    resolve(Some(target), memory, &known_math_addresses())
}

fn resolve(target: Option<u64>, memory: &dyn CodeMemory, math: &[(u64, MathFn)]) -> Callee {
    let Some(mut target) = target else { return Callee::Unknown { target: None, symbol: None } };
    // A PLT stub: `[endbr64;] jmp [rip+slot]` — follow it to the real target.
    let bytes = memory.read_up_to(target, 32);
    let mut decoder = Decoder::with_ip(64, &bytes, target, DecoderOptions::NONE);
    let mut first = decoder.decode();
    if first.code() == Code::Endbr64 {
        first = decoder.decode();
    }
    if first.flow_control() == FlowControl::IndirectBranch && first.is_ip_rel_memory_operand() {
        if let Some(real) = memory.read_u64(first.ip_rel_memory_address()) {
            target = real;
        }
    }
    if let Some(&(_, m)) = math.iter().find(|(a, _)| *a == target) {
        return Callee::Math(m);
    }
    let symbol = symbol_at(target);
    match symbol.as_deref().and_then(MathFn::from_symbol) {
        Some(m) => Callee::Math(m),
        None => Callee::Unknown { target: Some(target), symbol },
    }
}

/// Basic blocks, back edges (DFS) and natural-loop nesting.
fn find_loops(map: &CodeMap) -> Vec<LoopInfo> {
    let mut leaders: BTreeSet<u64> = BTreeSet::from([map.entry]);
    for ins in map.instrs.values() {
        match ins.flow_control() {
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch => {
                if ins.op0_kind() == OpKind::NearBranch64 {
                    leaders.insert(ins.near_branch_target());
                }
                leaders.insert(ins.next_ip());
            }
            FlowControl::Return
            | FlowControl::IndirectBranch
            | FlowControl::Interrupt
            | FlowControl::Exception => {
                leaders.insert(ins.next_ip());
            }
            _ => {}
        }
    }
    leaders.retain(|a| map.instrs.contains_key(a));
    let block_of = |ip: u64| leaders.range(..=ip).next_back().copied().unwrap_or(ip);
    // Block start -> successor block starts.
    let mut succ: BTreeMap<u64, Vec<u64>> = leaders.iter().map(|&l| (l, Vec::new())).collect();
    for ins in map.instrs.values() {
        let next = ins.next_ip();
        let targets = match ins.flow_control() {
            FlowControl::ConditionalBranch => vec![ins.near_branch_target(), next],
            FlowControl::UnconditionalBranch if ins.op0_kind() == OpKind::NearBranch64 => {
                vec![ins.near_branch_target()]
            }
            FlowControl::Next | FlowControl::Call | FlowControl::IndirectCall if leaders.contains(&next) => {
                vec![next]
            }
            _ => vec![],
        };
        let from = block_of(ins.ip());
        let list = succ.entry(from).or_default();
        list.extend(targets.into_iter().filter(|t| leaders.contains(t)));
    }
    // Iterative DFS for back edges.
    let mut back_edges = Vec::new();
    let mut state: HashMap<u64, u8> = HashMap::new(); // 1 = on stack, 2 = done
    let mut stack: Vec<(u64, usize)> = vec![(map.entry, 0)];
    state.insert(map.entry, 1);
    while let Some(&mut (node, ref mut i)) = stack.last_mut() {
        let succs = succ.get(&node).map(Vec::as_slice).unwrap_or(&[]);
        if *i < succs.len() {
            let s = succs[*i];
            *i += 1;
            match state.get(&s) {
                Some(1) => back_edges.push((node, s)),
                Some(_) => {}
                None => {
                    state.insert(s, 1);
                    stack.push((s, 0));
                }
            }
        } else {
            state.insert(node, 2);
            stack.pop();
        }
    }
    // Natural loop of each back edge; loops sharing a header are merged.
    let mut pred: HashMap<u64, Vec<u64>> = HashMap::new();
    for (&b, ss) in &succ {
        for &s in ss {
            pred.entry(s).or_default().push(b);
        }
    }
    let mut bodies: BTreeMap<u64, HashSet<u64>> = BTreeMap::new();
    for (tail, header) in back_edges {
        let body = bodies.entry(header).or_insert_with(|| HashSet::from([header]));
        let mut work = vec![tail];
        while let Some(b) = work.pop() {
            if body.insert(b) {
                work.extend(pred.get(&b).into_iter().flatten().copied());
            }
        }
    }
    let headers: Vec<(u64, HashSet<u64>)> = bodies.into_iter().collect();
    headers
        .iter()
        .map(|(header, body)| {
            let depth = headers
                .iter()
                .filter(|(h, b)| b.contains(header) && b.len() >= body.len() && (h != header))
                .count()
                + 1;
            LoopInfo { header: *header, blocks: body.len(), depth }
        })
        .collect()
}

/// Calls the libm function the analysed code called (same symbol, same result bits).
pub fn libm_call(f: MathFn, x: f32) -> f32 {
    // SAFETY: these libm functions are pure and defined for every f32.
    unsafe {
        match f {
            MathFn::Exp => libm::expf(x),
            MathFn::Log => libm::logf(x),
            MathFn::Tanh => libm::tanhf(x),
            MathFn::Sqrt => libm::sqrtf(x),
            MathFn::Fma => libm::fmaf(x, x, x),
            MathFn::Pow => libm::powf(x, x),
            MathFn::Fabs => libm::fabsf(x),
            MathFn::Unary(m) => unary_fn(m)(x),
        }
    }
}

/// `powf(x, y)` as the analysed code called it.
pub fn libm_pow(x: f32, y: f32) -> f32 {
    // SAFETY: powf is pure and defined for every pair of f32.
    unsafe { libm::powf(x, y) }
}

/// The libm function behind a [`MathOp`] (one table for calling it and
/// for recognising and emitting calls to it).
fn unary_fn(m: MathOp) -> unsafe extern "C" fn(f32) -> f32 {
    match m {
        MathOp::Erf => libm::erff,
        MathOp::Expm1 => libm::expm1f,
        MathOp::Log1p => libm::log1pf,
        MathOp::Sin => libm::sinf,
        MathOp::Cos => libm::cosf,
        MathOp::Floor => libm::floorf,
        MathOp::Ceil => libm::ceilf,
        MathOp::Trunc => libm::truncf,
        MathOp::Round => libm::roundf,
        MathOp::RoundEven => libm::rintf,
    }
}

/// Calls the libm function behind a [`MathOp`].
pub fn libm_unary(m: MathOp, x: f32) -> f32 {
    // SAFETY: these libm functions are pure and defined for every f32.
    unsafe { unary_fn(m)(x) }
}

/// The address of the libm function behind a [`MathOp`] or (for `None`)
/// `powf`, for kernels that call it per lane.
pub fn libm_address(m: Option<MathOp>) -> u64 {
    match m {
        Some(m) => unary_fn(m) as usize as u64,
        None => libm::powf as *const () as usize as u64,
    }
}
