// Per-instruction-set copies of a CPU hot loop (the extension is built for baseline x86-64):
// TLTORCH_EXT_ISA_CLONES on a function compiles it for AVX-512, AVX2+FMA and baseline and picks
// one at load time (GCC function multiversioning); the helpers it calls must be
// TLTORCH_EXT_INLINE so that each copy gets its own. Elsewhere: the compiler's default target.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define TLTORCH_EXT_ISA_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TLTORCH_EXT_ISA_CLONES
#endif
#define TLTORCH_EXT_INLINE inline __attribute__((always_inline))
