//! Prints the analyser's disassembly of one symbol in a shared library (debug aid).
fn main() {
    let mut a = std::env::args().skip(1);
    let (path, sym) = (a.next().expect("library path"), a.next().expect("symbol"));
    // SAFETY: a debug aid the user points at a library of this project's fixtures; its initialisers are trusted.
    let lib = unsafe { libloading::Library::new(&path) }.unwrap();
    // SAFETY: the symbol's address is only read as bytes by the analyser, never called.
    let f: *const u8 = unsafe { *lib.get::<*const u8>(sym.as_bytes()).unwrap() };
    let mem = gllm_kernels::trace::ProcessMemory::new();
    let code = gllm_kernels::trace::CodeMap::discover(&sym, f as u64, &mem).unwrap();
    print!("{}", code.disassembly());
}
