/* Batch encoder of tc-flower netlink messages: one template, many rules.
 *
 * The encoder knows no flower attribute. Python (hwflow/backends/tc/native.py)
 * encodes one *prototype* rule with the reference encoder and finds where
 * each varying field lives in those bytes (a *slot*: offset, size, byte
 * order, allowed range). A batch is then the template plus a row of 64-bit
 * values per rule; every message is the template with its sequence number
 * and its row written into the slots. All messages of a batch have the
 * template's length, so rule i starts at i * template size.
 *
 * Values are checked before they are written: each must lie in
 * [min, max] and, for a masked key, have no bit outside its mask (the mask
 * comes from another slot of the same row, or is the prototype's), and a
 * varying mask must keep every bit of a constant value. The
 * first bad value stops the batch and is reported by rule and slot.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Declarations: native/build_tc.py repeats them for cffi, which checks they agree. */
enum { HWTC_OK = 0, HWTC_E_RANGE = 1, HWTC_E_MASK = 2, HWTC_E_SPACE = 3, HWTC_E_SLOT = 4, HWTC_E_COVERS = 5 };

struct hwtc_slot {
    uint32_t offset;     /* in the message */
    uint8_t size;        /* bytes, 1..8 */
    uint8_t big_endian;  /* else host order (little endian on the machines hwflow runs on) */
    int16_t mask_slot;   /* index of the slot holding this value's mask, or -1 */
    uint64_t min, max;   /* the value's allowed range */
    uint64_t mask_const; /* the mask when mask_slot is -1 (all ones when the key is exact) */
    uint64_t covers;     /* for a mask whose value is constant: the value's bits, which the mask must keep */
};

struct hwtc_result {
    uint32_t written;   /* messages written */
    int error;          /* HWTC_* */
    uint32_t bad_rule;  /* when error: the rule ... */
    uint32_t bad_slot;  /* ... and the slot */
};

static void put(uint8_t *at, uint64_t value, uint8_t size, uint8_t big_endian)
{
    for (uint8_t i = 0; i < size; i++) {
        uint8_t byte = (uint8_t)(value >> (8 * i));
        at[big_endian ? size - 1 - i : i] = byte;
    }
}

/* Checks every slot definition once, so the per-rule loop can trust offsets and sizes. */
static int check_slots(size_t template_size, const struct hwtc_slot *slots, uint32_t nslots)
{
    for (uint32_t s = 0; s < nslots; s++) {
        if (slots[s].size < 1 || slots[s].size > 8 || slots[s].offset + (size_t)slots[s].size > template_size)
            return 0;
        if (slots[s].mask_slot >= (int32_t)nslots)
            return 0;
    }
    return 1;
}

/* Encodes rules [0, nrules) of a batch into out; values holds nrules rows of nslots words.
 * The netlink sequence number (bytes 8..11, host order) of rule i is first_seq + i. */
int hwtc_encode(const uint8_t *template_bytes, uint32_t template_size, const struct hwtc_slot *slots,
                uint32_t nslots, const uint64_t *values, uint32_t nrules, uint32_t first_seq, uint8_t *out,
                size_t cap, struct hwtc_result *res)
{
    res->written = 0;
    res->error = HWTC_OK;
    if (template_size < 16 || !check_slots(template_size, slots, nslots)) {
        res->error = HWTC_E_SLOT;
        return res->error;
    }
    if ((size_t)nrules * template_size > cap) {
        res->error = HWTC_E_SPACE;
        return res->error;
    }
    for (uint32_t r = 0; r < nrules; r++) {
        const uint64_t *row = values + (size_t)r * nslots;
        uint8_t *msg = out + (size_t)r * template_size;
        memcpy(msg, template_bytes, template_size);
        uint32_t seq = first_seq + r;
        memcpy(msg + 8, &seq, sizeof(seq));
        for (uint32_t s = 0; s < nslots; s++) {
            const struct hwtc_slot *slot = &slots[s];
            uint64_t value = row[s];
            uint64_t mask = slot->mask_slot >= 0 ? row[slot->mask_slot] : slot->mask_const;
            if (value < slot->min || value > slot->max) {
                res->error = HWTC_E_RANGE;
            } else if (value & ~mask) {
                res->error = HWTC_E_MASK;
            } else if (slot->covers & ~value) {
                res->error = HWTC_E_COVERS;
            }
            if (res->error) {
                res->bad_rule = r;
                res->bad_slot = s;
                return res->error;
            }
            put(msg + slot->offset, value, slot->size, slot->big_endian);
        }
        res->written = r + 1;
    }
    return HWTC_OK;
}
