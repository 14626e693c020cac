//! build.rs — compiles `kernels/*.cu` (and the test kernels in `kernels/test/*.cu`) twice:
//!
//! 1. always, for the emulated device: the host C++ compiler (cc crate, C++20) builds every kernel
//!    file against the emulation shim `kernels/emu/cuda_emu.h` into a static library, together with
//!    one `emu_<kernel>(void** params)` trampoline per `extern "C" __global__` kernel and the kernel
//!    table behind `pepler_emu_launch` (kernels/emu/emu_runtime.cpp);
//! 2. when nvcc is found (`NVCC`, then `$CUDA_HOME/bin/nvcc`, then `PATH`), into one fatbin with SASS
//!    for sm_80/86/89/90 and PTX for compute_80, embedded by `src/device/embedded.rs` (cfg
//!    `pepler_fatbin`). Without nvcc the build still succeeds and the CUDA device reports that no
//!    kernels were compiled.
//!
//! Environment: `NVCC`, `CUDA_HOME`, `PEPLER_PTXAS_INFO=1` (per-kernel registers/spills as cargo
//! warnings), `PEPLER_EMU_TSAN=1` / `PEPLER_EMU_ASAN=1` (emulated kernels under ThreadSanitizer /
//! AddressSanitizer, see docs/emulator.md; `scripts/sanitize.sh` runs both).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// SASS targets of the fatbin; PTX is added for `PTX_TARGET` so newer GPUs can JIT it.
const SASS_TARGETS: &[&str] = &["80", "86", "89", "90"];
const PTX_TARGET: &str = "80";
/// nvcc flags, in one place. No `--use_fast_math`: the kernels must match the CPU reference.
const NVCC_FLAGS: &[&str] = &["-std=c++20", "-O3", "-lineinfo"];

fn main() {
    let root = PathBuf::from(env("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kdir = root.join("kernels");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "PEPLER_EMU_ASAN",
        "NVCC",
        "CUDA_HOME",
        "PEPLER_PTXAS_INFO",
        "PEPLER_EMU_TSAN",
        "NVCC_CCBIN",
        "NVCC_PREPEND_FLAGS",
        "NVCC_APPEND_FLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(pepler_fatbin)");

    let mut sources = cu_files(&kdir);
    sources.extend(cu_files(&kdir.join("test")));
    let mut files = Vec::new();
    for path in &sources {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let scan = scan_kernels(&text);
        for name in &scan.not_extern_c {
            println!(
                "cargo:warning={}: __global__ `{name}` is not `extern \"C\"`, so it cannot be launched by name",
                rel(&root, path)
            );
        }
        files.push((path.clone(), scan.kernels));
    }
    check_unique_names(&root, &files);

    // nvcc runs in the background while the host compiler builds the emulated kernels
    let fatbin = start_fatbin(&kdir, &out, &sources);
    build_emulator(&root, &kdir, &out, &files);
    write_signatures(&root, &out, &files);
    if let Some(finish) = fatbin {
        finish();
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn cu_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn check_unique_names(root: &Path, files: &[(PathBuf, Vec<KernelDecl>)]) {
    let mut seen: std::collections::HashMap<&str, &Path> = Default::default();
    for (path, kernels) in files {
        for n in kernels.iter().map(|k| k.name.as_str()) {
            if let Some(prev) = seen.insert(n, path) {
                panic!(
                    "kernel `{n}` is defined in both {} and {}: kernel names must be unique",
                    rel(root, prev),
                    rel(root, path)
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// the emulated kernels

/// Host compiler flags shared by the emulator runtime and the kernels. `-ffp-contract=off`: the
/// host compiler never fuses a multiply and an add on its own (GCC's default for GNU C++ is `fast`,
/// which contracts as soon as the target has FMA), so an emulated kernel computes exactly the
/// operations written; where the order of rounding matters the kernels say `__fmaf_rn` explicitly
/// (nvcc contracts by default, so an unfused `a * b + c` may round differently on a GPU).
const HOST_FLAGS: &[&str] = &["-pthread", "-ffp-contract=off"];

/// Instrumentation of the emulated kernels for the emulator's strict mode (memcheck/initcheck):
/// every load and store the compiler cannot prove local becomes a call to `__asan_{load,store}N_noabort`
/// (GCC's kernel-AddressSanitizer ABI, outlined), which kernels/emu/emu_runtime.cpp implements
/// itself — no ASan runtime, no shadow memory. Not combinable with -fsanitize=thread/address, so the
/// TSan/ASan builds (scripts/sanitize.sh) leave it out.
const MEMCHECK_FLAGS: &[&str] = &[
    "-fsanitize=kernel-address",
    "--param=asan-instrumentation-with-call-threshold=0",
    "--param=asan-stack=0",
    "--param=asan-globals=0",
    "--param=asan-use-after-return=0",
];

fn build_emulator(root: &Path, kdir: &Path, out: &Path, files: &[(PathBuf, Vec<KernelDecl>)]) {
    let gen = out.join("emu_gen");
    std::fs::create_dir_all(&gen).expect("create OUT_DIR/emu_gen");
    let shim = kdir.join("emu").join("cuda_emu.h");
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .std("c++20")
            .opt_level(2)
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-unknown-pragmas")
            .include(kdir);
        for f in HOST_FLAGS {
            b.flag(f);
        }
        b
    };
    let mut runtime = base();
    runtime.file(kdir.join("emu").join("emu_runtime.cpp"));
    let mut build = base();
    let tsan = env("PEPLER_EMU_TSAN").is_some_and(|v| v != "0");
    let asan = env("PEPLER_EMU_ASAN").is_some_and(|v| v != "0");
    if tsan && asan {
        panic!("PEPLER_EMU_TSAN and PEPLER_EMU_ASAN cannot be combined: build them one at a time");
    }
    for (on, san, lib) in [(tsan, "thread", "tsan"), (asan, "address", "asan")] {
        if !on {
            continue;
        }
        let flag = format!("-fsanitize={san}");
        for b in [&mut runtime, &mut build] {
            b.flag(&flag).flag("-g").flag("-fno-omit-frame-pointer");
        }
        // rustc links with -nodefaultlibs, so the driver flag alone does not pull in the runtime
        println!("cargo:rustc-link-arg={flag}");
        println!("cargo:rustc-link-lib=dylib={lib}");
        println!(
            "cargo:warning=PEPLER_EMU_{}: emulated kernels built with {flag} (strict-mode memcheck \
             instrumentation off in this build)",
            lib.to_uppercase()
        );
    }
    if !tsan && !asan {
        // GCC's flags; a compiler without them (clang spells them differently) builds a working
        // emulator without strict mode's memcheck/initcheck of device memory, and says so
        if MEMCHECK_FLAGS
            .iter()
            .all(|f| build.is_flag_supported(f).unwrap_or(false))
        {
            for f in MEMCHECK_FLAGS {
                build.flag(f);
            }
            runtime.define("PEPLER_EMU_MEMCHECK", "1");
        } else {
            println!(
                "cargo:warning=the host C++ compiler does not take {MEMCHECK_FLAGS:?} (GCC does): \
                 emulated kernels built WITHOUT strict-mode memcheck/initcheck"
            );
        }
    }

    let mut table = format!(
        "// generated by build.rs: the emulated kernel table\n#include \"{}\"\n",
        shim.display()
    );
    let mut entries = String::new();
    let test_dir = kdir.join("test");
    for (i, (path, kernels)) in files.iter().enumerate() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let wrapper = gen.join(format!("k{i:03}_{stem}.cpp"));
        // production kernels (kernels/*.cu, not kernels/test/) may not use float atomics: the shim
        // turns one into a compile error there (determinism, docs/emulator.md)
        let production = !path.starts_with(&test_dir);
        let mut w = format!(
            "// generated by build.rs: emulation trampolines for {}\n{}#include \"{}\"\n#include \"{}\"\n",
            rel(root, path),
            if production { "#define PEPLER_EMU_PRODUCTION_KERNEL 1\n" } else { "" },
            shim.display(),
            path.display()
        );
        for k in kernels {
            let name = &k.name;
            let names = k
                .params
                .iter()
                .map(|(n, _)| format!("\"{n}\""))
                .chain(std::iter::once("nullptr".to_string()))
                .collect::<Vec<_>>()
                .join(", ");
            let types = k
                .params
                .iter()
                .map(|(_, t)| format!("\"{}\"", t.replace('"', "")))
                .chain(std::iter::once("nullptr".to_string()))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                w,
                "extern \"C\" void emu_{name}(void** p) {{ pepler_emu::call_kernel({name}, p); }}\n\
                 extern \"C\" const pepler_emu::KernelSig emu_sig_{name} = pepler_emu::kernel_sig({name});\n\
                 extern \"C\" const char* const emu_pnames_{name}[] = {{{names}}};\n\
                 extern \"C\" const char* const emu_ptypes_{name}[] = {{{types}}};"
            );
            let _ = writeln!(
                table,
                "extern \"C\" void emu_{name}(void**);\nextern \"C\" const pepler_emu::KernelSig emu_sig_{name};\n\
                 extern \"C\" const char* const emu_pnames_{name}[];\nextern \"C\" const char* const emu_ptypes_{name}[];"
            );
            let _ = writeln!(
                entries,
                "    {{\"{name}\", emu_{name}, &emu_sig_{name}, emu_pnames_{name}, emu_ptypes_{name}}},"
            );
        }
        write_if_changed(&wrapper, &w);
        build.file(&wrapper);
    }
    let count = files.iter().map(|(_, k)| k.len()).sum::<usize>();
    if count == 0 {
        entries.push_str("    {nullptr, nullptr, nullptr, nullptr, nullptr},\n");
    }
    let _ = write!(
        table,
        "namespace pepler_emu {{\nextern const KernelEntry kernel_table[] = {{\n{entries}}};\n\
         extern const std::size_t kernel_table_len = {count};\n}}\n"
    );
    let table_path = gen.join("emu_kernel_table.cpp");
    write_if_changed(&table_path, &table);
    runtime.file(&table_path);
    // the runtime (and the table) are not instrumented: only kernel code is checked
    build.objects(runtime.compile_intermediates());
    build.compile("pepler_emu");
    println!("cargo:rustc-link-lib=pthread");
}

/// `OUT_DIR/kernel_sigs.rs` (included by `src/device/sigs.rs`): every kernel's parameters as
/// written in its source, so that both devices check a launch's arguments (count, kind, size)
/// before it runs.
fn write_signatures(root: &Path, out: &Path, files: &[(PathBuf, Vec<KernelDecl>)]) {
    let mut s = String::from("// generated by build.rs from the kernel sources\npub static KERNEL_SIGS: &[KernelSig] = &[\n");
    for (path, kernels) in files {
        for k in kernels {
            let _ = writeln!(
                s,
                "    KernelSig {{ name: {:?}, file: {:?}, params: &[",
                k.name,
                rel(root, path)
            );
            for (n, t) in &k.params {
                let (kind, size) = param_kind(t);
                let _ = writeln!(
                    s,
                    "        ParamSig {{ name: {n:?}, ty: {t:?}, kind: ParamKind::{kind}, size: {size} }},"
                );
            }
            s.push_str("    ] },\n");
        }
    }
    s.push_str("];\n");
    write_if_changed(&out.join("kernel_sigs.rs"), &s);
}

/// Keeps mtimes stable so cc's outputs stay meaningful across reruns.
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

// ------------------------------------------------------------------------------------------------
// nvcc

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env("NVCC") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            panic!(
                "NVCC={} does not exist (unset NVCC to build without CUDA kernels)",
                p.display()
            );
        }
        return Some(p);
    }
    if let Some(home) = env("CUDA_HOME") {
        let p = Path::new(&home).join("bin").join("nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
}

/// Starts nvcc (if found) on a background thread; the returned closure waits for it and reports.
fn start_fatbin(kdir: &Path, out: &Path, sources: &[PathBuf]) -> Option<Box<dyn FnOnce()>> {
    let targets = SASS_TARGETS
        .iter()
        .map(|t| format!("sm_{t}"))
        .collect::<Vec<_>>()
        .join(",");
    println!("cargo:rustc-env=PEPLER_FATBIN_TARGETS={targets},compute_{PTX_TARGET}");
    let Some(nvcc) = find_nvcc() else {
        println!(
            "cargo:warning=nvcc not found (NVCC, CUDA_HOME, PATH): CUDA kernels NOT compiled; the emulated \
             and CPU devices still work"
        );
        return None;
    };
    let version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", nvcc.display()));
    let vtext = String::from_utf8_lossy(&version.stdout);
    let version = vtext
        .lines()
        .find_map(|l| l.rsplit_once(", V").map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());

    // every kernel file in one translation unit, so that one fatbin holds all of them
    let mut unit = String::from("// generated by build.rs: all kernels in one translation unit\n");
    for s in sources {
        let _ = writeln!(unit, "#include \"{}\"", s.display());
    }
    let unit_path = out.join("all_kernels.cu");
    write_if_changed(&unit_path, &unit);
    let fatbin = out.join("kernels.fatbin");

    let ptxas_info = env("PEPLER_PTXAS_INFO").is_some_and(|v| v != "0");
    let mut cmd = Command::new(&nvcc);
    cmd.arg("-fatbin").args(NVCC_FLAGS).arg("-I").arg(kdir);
    for t in SASS_TARGETS {
        cmd.arg("-gencode")
            .arg(format!("arch=compute_{t},code=sm_{t}"));
    }
    cmd.arg("-gencode").arg(format!(
        "arch=compute_{PTX_TARGET},code=compute_{PTX_TARGET}"
    ));
    if ptxas_info {
        cmd.args(["-Xptxas", "-v"]);
    }
    cmd.arg("-o").arg(&fatbin).arg(&unit_path);
    let cmd_desc = format!("{cmd:?}");
    let job = std::thread::spawn(move || cmd.output());
    let n_sources = sources.len();
    Some(Box::new(move || {
        let res = job
            .join()
            .expect("the nvcc thread panicked")
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
        if !res.status.success() {
            panic!("nvcc failed to compile the kernels ({cmd_desc}):\n{log}");
        }
        for line in log.lines().filter(|l| l.contains("warning")) {
            println!("cargo:warning=nvcc: {line}");
        }
        let names = SASS_TARGETS
            .iter()
            .map(|t| format!("sm_{t}"))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
        "cargo:warning=kernels compiled by nvcc for {names} (+PTX compute_{PTX_TARGET}): nvcc {version} ({}), \
         {} kernel files",
        nvcc.display(),
        n_sources
    );
        if ptxas_info {
            for row in ptxas_table(&log) {
                println!("cargo:warning={row}");
            }
        }
        println!("cargo:rustc-cfg=pepler_fatbin");
        println!("cargo:rustc-env=PEPLER_NVCC_VERSION={version}");
    }))
}

/// Per kernel and arch: registers, stack, spills, static shared memory, from `ptxas -v` output.
#[derive(Default, Clone)]
struct PtxasRow {
    kernel: String,
    arch: String,
    regs: u64,
    stack: u64,
    spill_st: u64,
    spill_ld: u64,
    smem: u64,
}

fn ptxas_table(log: &str) -> Vec<String> {
    let num_before = |s: &str, unit: &str| -> Option<u64> {
        let i = s.find(unit)?;
        s[..i]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|t| !t.is_empty())?
            .parse()
            .ok()
    };
    let mut rows: Vec<PtxasRow> = Vec::new();
    let mut cur: Option<PtxasRow> = None;
    for line in log.lines() {
        let l = line.trim();
        if let Some(rest) = l.split_once("Compiling entry function '").map(|x| x.1) {
            if let Some(r) = cur.take() {
                rows.push(r);
            }
            let mut it = rest.split('\'');
            let kernel = it.next().unwrap_or("").to_string();
            let arch = rest
                .split_once("for '")
                .map(|x| x.1.trim_end_matches('\''))
                .unwrap_or("?")
                .to_string();
            cur = Some(PtxasRow {
                kernel,
                arch,
                ..Default::default()
            });
        } else if let Some(r) = cur.as_mut() {
            if l.contains("bytes stack frame") {
                r.stack = num_before(l, "bytes stack frame").unwrap_or(0);
                r.spill_st = num_before(l, "bytes spill stores").unwrap_or(0);
                r.spill_ld = num_before(l, "bytes spill loads").unwrap_or(0);
            } else if l.contains("Used ") && l.contains("registers") {
                r.regs = num_before(l, "registers").unwrap_or(0);
                r.smem = num_before(l, "bytes smem").unwrap_or(0);
                rows.push(cur.take().unwrap_or_default());
            }
        }
    }
    rows.extend(cur);
    rows.sort_by(|a, b| (&a.kernel, &a.arch).cmp(&(&b.kernel, &b.arch)));
    let w = rows
        .iter()
        .map(|r| r.kernel.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = vec![format!(
        "ptxas | {:<w$} | arch  | regs | stack B | spill st B | spill ld B | smem B",
        "kernel"
    )];
    for r in rows {
        out.push(format!(
            "ptxas | {:<w$} | {:<5} | {:>4} | {:>7} | {:>10} | {:>10} | {:>6}{}",
            r.kernel,
            r.arch,
            r.regs,
            r.stack,
            r.spill_st,
            r.spill_ld,
            r.smem,
            if r.spill_st + r.spill_ld > 0 {
                "  <- SPILLS"
            } else {
                ""
            }
        ));
    }
    out
}

// ------------------------------------------------------------------------------------------------
// finding the kernels: a small tokenizer (comments and preprocessor lines dropped) that looks for
// `__global__` definitions and whether they are `extern "C"` (directly or inside `extern "C" { }`).

struct Scan {
    kernels: Vec<KernelDecl>,
    not_extern_c: Vec<String>,
}

/// One `extern "C" __global__` kernel: its name and its parameters (name, C type) as written.
struct KernelDecl {
    name: String,
    params: Vec<(String, String)>,
}

#[derive(PartialEq, Debug)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

fn tokenize(src: &str) -> Vec<Tok> {
    let b: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let mut line_start = true;
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line_start = true;
            i += 1;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' && line_start {
            // preprocessor directive, with backslash continuations
            while i < b.len() && b[i] != '\n' {
                if b[i] == '\\' && i + 1 < b.len() && b[i + 1] == '\n' {
                    i += 1;
                }
                i += 1;
            }
            continue;
        }
        line_start = false;
        if c == '/' && b.get(i + 1) == Some(&'/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '"' || c == '\'' {
            let q = c;
            let mut s = String::new();
            i += 1;
            while i < b.len() && b[i] != q {
                if b[i] == '\\' {
                    i += 1;
                }
                if i < b.len() {
                    s.push(b[i]);
                }
                i += 1;
            }
            i += 1;
            toks.push(Tok::Str(s));
        } else if c.is_alphanumeric() || c == '_' {
            let s: String = b[i..]
                .iter()
                .take_while(|c| c.is_alphanumeric() || **c == '_')
                .collect();
            i += s.chars().count();
            toks.push(Tok::Ident(s));
        } else {
            toks.push(Tok::Punct(c));
            i += 1;
        }
    }
    toks
}

fn scan_kernels(src: &str) -> Scan {
    let toks = tokenize(src);
    let is_ident = |t: &Tok, s: &str| matches!(t, Tok::Ident(x) if x == s);
    let is_extern_c = |i: usize| {
        i >= 2 && is_ident(&toks[i - 2], "extern") && toks[i - 1] == Tok::Str("C".into())
    };
    let mut scan = Scan {
        kernels: Vec::new(),
        not_extern_c: Vec::new(),
    };
    let mut braces: Vec<bool> = Vec::new(); // true: an `extern "C" {` block
    let mut decl_start = 0;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('{') => {
                braces.push(is_extern_c(i));
                decl_start = i + 1;
            }
            Tok::Punct('}') => {
                braces.pop();
                decl_start = i + 1;
            }
            Tok::Punct(';') => decl_start = i + 1,
            Tok::Ident(s) if s == "__global__" => {
                let extern_c = braces.iter().any(|b| *b)
                    || (decl_start..i).any(|j| {
                        is_ident(&toks[j], "extern")
                            && toks.get(j + 1) == Some(&Tok::Str("C".into()))
                    });
                // the name: the first identifier followed by `(` that is not an attribute
                let mut j = i + 1;
                let mut name = None;
                while j + 1 < toks.len() {
                    if let (Tok::Ident(id), Tok::Punct('(')) = (&toks[j], &toks[j + 1]) {
                        if matches!(
                            id.as_str(),
                            "__launch_bounds__"
                                | "__align__"
                                | "alignas"
                                | "__attribute__"
                                | "__declspec"
                        ) {
                            j = skip_parens(&toks, j + 1);
                            continue;
                        }
                        name = Some((id.clone(), j + 1));
                        break;
                    }
                    if matches!(toks[j], Tok::Punct(';') | Tok::Punct('{')) {
                        break;
                    }
                    j += 1;
                }
                if let Some((name, open)) = name {
                    let close = skip_parens(&toks, open);
                    let is_definition = toks.get(close) == Some(&Tok::Punct('{'));
                    if is_definition {
                        if !extern_c {
                            if !scan.not_extern_c.contains(&name) {
                                scan.not_extern_c.push(name);
                            }
                        } else if !scan.kernels.iter().any(|k| k.name == name) {
                            let params = parse_params(&toks[open + 1..close - 1]);
                            scan.kernels.push(KernelDecl { name, params });
                        }
                    }
                    i = close;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

/// The parameters of a kernel signature (the tokens between its parentheses): `(name, type)` with
/// the type normalised to single spaces, `*` attached and `__restrict__` dropped, e.g.
/// `("weight", "const float*")`. An unnamed parameter is called `argN`.
fn parse_params(toks: &[Tok]) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut cur: Vec<&Tok> = Vec::new();
    let mut depth = 0i32;
    let flush = |cur: &mut Vec<&Tok>, params: &mut Vec<(String, String)>| {
        if cur.is_empty() {
            return;
        }
        // a default argument never appears in kernels; drop `= ...` defensively
        if let Some(eq) = cur.iter().position(|t| **t == Tok::Punct('=')) {
            cur.truncate(eq);
        }
        let idents: Vec<usize> = (0..cur.len())
            .filter(|&i| matches!(cur[i], Tok::Ident(_)))
            .collect();
        let n_type_words = idents
            .iter()
            .filter(|&&i| !matches!(cur[i], Tok::Ident(x) if is_qualifier(x)))
            .count();
        // `float* out`: the last identifier is the name when the type has another word
        let name_at = match idents.last() {
            Some(&i) if n_type_words >= 2 && i + 1 == cur.len() => Some(i),
            _ => None,
        };
        let name = match name_at {
            Some(i) => match cur[i] {
                Tok::Ident(x) => x.clone(),
                _ => unreachable!(),
            },
            None => format!("arg{}", params.len()),
        };
        let mut ty = String::new();
        for (i, t) in cur.iter().enumerate() {
            if Some(i) == name_at {
                continue;
            }
            match t {
                Tok::Ident(x)
                    if matches!(x.as_str(), "__restrict__" | "__restrict" | "restrict") => {}
                Tok::Ident(x) => {
                    if !ty.is_empty() && !ty.ends_with(['<', ':']) {
                        ty.push(' ');
                    }
                    ty.push_str(x);
                }
                Tok::Punct(c) => {
                    while *c != '<' && *c != ':' && ty.ends_with(' ') {
                        ty.pop();
                    }
                    ty.push(*c);
                }
                Tok::Str(x) => ty.push_str(x),
            }
        }
        params.push((name, ty.trim().to_string()));
        cur.clear();
    };
    for t in toks {
        match t {
            Tok::Punct('(' | '<' | '[') => depth += 1,
            Tok::Punct(')' | '>' | ']') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                flush(&mut cur, &mut params);
                continue;
            }
            _ => {}
        }
        cur.push(t);
    }
    flush(&mut cur, &mut params);
    if params.len() == 1 && params[0].1 == "void" {
        params.clear();
    }
    params
}

fn is_qualifier(w: &str) -> bool {
    matches!(
        w,
        "const" | "volatile" | "__restrict__" | "__restrict" | "restrict" | "__grid_constant__"
    )
}

/// Kind and size in bytes of a parameter type as the device layer checks it (Rust
/// `device::sigs::ParamKind`): `Ptr` (8 bytes, `const` pointee or not), `F32`, `F64`, `Int`
/// (signed or unsigned of the given size), or `Other` (size taken from the C++ compiler, through
/// the emulator's table).
fn param_kind(ty: &str) -> (&'static str, usize) {
    if ty.contains('*') {
        let pointee_const = ty.starts_with("const ") || ty.contains(" const*");
        return (if pointee_const { "ConstPtr" } else { "Ptr" }, 8);
    }
    let words: Vec<&str> = ty
        .split(' ')
        .filter(|w| !is_qualifier(w) && !w.is_empty())
        .collect();
    match words.join(" ").as_str() {
        "float" => ("F32", 4),
        "double" => ("F64", 8),
        "int" | "signed" | "signed int" | "int32_t" | "unsigned" | "unsigned int" | "uint32_t" => {
            ("Int", 4)
        }
        "long long" | "long long int" | "int64_t" | "long" | "long int" | "ptrdiff_t"
        | "unsigned long long" | "uint64_t" | "size_t" | "unsigned long" => ("Int", 8),
        "short" | "unsigned short" | "int16_t" | "uint16_t" => ("Int", 2),
        "char" | "signed char" | "unsigned char" | "int8_t" | "uint8_t" | "bool" => ("Int", 1),
        _ => ("Other", 0),
    }
}

/// `toks[open]` is `(`: returns the index after the matching `)`.
fn skip_parens(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0usize;
    let mut j = open;
    while j < toks.len() {
        match toks[j] {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}
