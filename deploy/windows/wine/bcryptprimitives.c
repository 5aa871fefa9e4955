/* For running kcdsync-agent.exe under Wine 8.0 (Debian 12) in CI only; never
 * shipped. Rust's std (1.78+) takes its randomness from ProcessPrng in
 * bcryptprimitives.dll, which Wine 8.0 does not have (Wine 9 does). This
 * forwards it to RtlGenRandom (advapi32's SystemFunction036), which Wine has.
 * Built by tests/tests/wine.rs with x86_64-w64-mingw32-gcc into the test's
 * own Wine prefix. */
#include <windows.h>

__declspec(dllimport) BOOLEAN WINAPI SystemFunction036(PVOID buf, ULONG len);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
