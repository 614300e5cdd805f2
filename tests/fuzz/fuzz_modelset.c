/* fuzz_modelset.c - libFuzzer harness for the ModelSet reader: open a file
 * image from memory, read every record three ways (metadata, table, decoded
 * tensors), then verify it. Built with -DLPS_FUZZING, which makes checksum
 * mismatches pass so the fuzzer reaches the parsers behind them: every
 * length and size check must hold on its own. */
#include <stddef.h>
#include <stdint.h>

#include "lualps.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lps_mset *ms;
    if (lps_mset_open_mem(&ms, data, size) == LPS_OK) {
        int64_t n = lps_mset_count(ms);
        volatile float sink = 0;
        for (int64_t i = 0; i < n && i < 64; i++) {
            lps_mset_info info;
            lps_mset_record_info(ms, i, &info);
            static const int what[] = {LPS_MSET_META, LPS_MSET_TABLE,
                                       LPS_MSET_META | LPS_MSET_DATA};
            for (int w = 0; w < 3; w++) {
                lps_mset_record rec;
                if (lps_mset_read(ms, i, what[w], &rec) != LPS_OK) continue;
                for (int k = 0; k < rec.ntensors; k++)
                    if (rec.tensors[k].tensor && rec.tensors[k].tensor->numel)
                        sink += rec.tensors[k].tensor->data[rec.tensors[k].tensor->numel - 1];
                if (rec.meta && rec.meta_len) sink += (float)rec.meta[rec.meta_len - 1];
                lps_mset_record_clear(&rec);
            }
        }
        (void)sink;
        lps_mset_close(ms);
    }
    lps_mset_report rep;
    lps_mset_verify_mem(data, size, &rep);
    lps_mset_report_free(&rep);
    return 0;
}
