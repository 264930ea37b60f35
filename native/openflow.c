/* Batch encoder of OpenFlow messages from a compact program of 64-bit words.
 *
 * The encoder knows no OpenFlow field or action: every piece of a message is
 * a *template* (fixed bytes plus big-endian slots for arguments) defined in
 * Python (hwflow/backends/ovs/native.py), so a new match field or action is a
 * table entry there, not C code. Four kinds of template:
 *
 *   PLAIN      bytes + slots (an OXM term, an output action, goto_table...)
 *   CONTAINER  opens a nested list closed by HWOF_CLOSE; its 16-bit length at
 *              length_at counts the whole container (apply_actions, NXAST_CT)
 *   MATCH      like CONTAINER but the length excludes the zero padding to a
 *              multiple of 8 that follows (ofp_match)
 *   MESSAGE    a top-level CONTAINER whose xid (bytes 4..7) is first_xid + n
 *
 * Program: a template index followed by one word per slot (two, high then
 * low, for slots wider than 8 bytes), or HWOF_CLOSE. Encoding stops at a
 * message boundary when fewer than 64 KiB of output remain, so the caller can
 * encode a large batch in chunks of bounded size and send each chunk while
 * encoding the next.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Declarations: native/build_of.py repeats them for cffi, which checks they agree. */
#define HWOF_MAX_SLOTS 12
#define HWOF_MAX_DEPTH 8
#define HWOF_CLOSE UINT64_MAX

enum { HWOF_PLAIN = 0, HWOF_CONTAINER = 1, HWOF_MATCH = 2, HWOF_MESSAGE = 3 };
enum { HWOF_OK = 0, HWOF_E_TEMPLATE = 1, HWOF_E_TRUNCATED = 2, HWOF_E_VALUE = 3, HWOF_E_NESTING = 4,
       HWOF_E_TOO_LONG = 5 };

struct hwof_slot {
    uint16_t offset;
    uint8_t width; /* bytes, 1..16 */
};

struct hwof_template {
    const uint8_t *data;
    uint16_t size;
    uint8_t kind;
    uint8_t nslots;
    uint16_t length_at;
    struct hwof_slot slots[HWOF_MAX_SLOTS];
};

struct hwof_result {
    size_t consumed; /* program words of the complete messages written */
    size_t written;  /* bytes of those messages */
    uint32_t messages;
    int error;
    size_t error_at; /* program word where the error was found */
};

#define MAX_MESSAGE 0xFFFFu

struct frame {
    size_t start;
    const struct hwof_template *tpl;
};

static void put_be(uint8_t *out, uint64_t value, unsigned width)
{
    for (unsigned i = 0; i < width; i++)
        out[width - 1 - i] = (uint8_t)(value >> (8 * i));
}

/* Writes one slot's argument(s); 0 if they fit the slot, else HWOF_E_VALUE. */
static int put_slot(uint8_t *out, const struct hwof_slot *slot, const uint64_t *args)
{
    unsigned width = slot->width;
    if (width > 8) {
        unsigned high = width - 8;
        if (high < 8 && args[0] >> (8 * high))
            return HWOF_E_VALUE;
        put_be(out + slot->offset, args[0], high);
        put_be(out + slot->offset + high, args[1], 8);
        return 0;
    }
    if (width < 8 && args[0] >> (8 * width))
        return HWOF_E_VALUE;
    put_be(out + slot->offset, args[0], width);
    return 0;
}

static unsigned slot_words(const struct hwof_template *tpl)
{
    unsigned words = 0;
    for (unsigned i = 0; i < tpl->nslots; i++)
        words += tpl->slots[i].width > 8 ? 2 : 1;
    return words;
}

static int fail(struct hwof_result *res, int error, size_t at)
{
    res->error = error;
    res->error_at = at;
    return error;
}

/* Pads a match, writes the container's length; returns the container's full size. */
static size_t close_frame(uint8_t *out, size_t *pos, const struct frame *frame)
{
    size_t length = *pos - frame->start;
    if (frame->tpl->kind == HWOF_MATCH) {
        size_t padded = (length + 7) & ~(size_t)7;
        memset(out + *pos, 0, padded - length);
        *pos = frame->start + padded;
    }
    put_be(out + frame->start + frame->tpl->length_at, length, 2);
    return *pos - frame->start;
}

int hwof_encode(const struct hwof_template *templates, uint32_t ntemplates, const uint64_t *prog, size_t nwords,
                uint32_t first_xid, uint8_t *out, size_t cap, struct hwof_result *res)
{
    struct frame stack[HWOF_MAX_DEPTH];
    unsigned depth = 0;
    size_t pos = 0, word = 0, message_word = 0;
    uint32_t messages = 0;

    memset(res, 0, sizeof(*res));
    while (word < nwords) {
        uint64_t op = prog[word];
        if (op == HWOF_CLOSE) {
            if (depth == 0)
                return fail(res, HWOF_E_NESTING, word);
            size_t size = close_frame(out, &pos, &stack[--depth]);
            if (size > MAX_MESSAGE)
                return fail(res, HWOF_E_TOO_LONG, message_word);
            word++;
            if (depth == 0) {
                messages++;
                res->consumed = word;
                res->written = pos;
                res->messages = messages;
            }
            continue;
        }
        if (op >= ntemplates)
            return fail(res, HWOF_E_TEMPLATE, word);
        const struct hwof_template *tpl = &templates[op];
        if ((depth == 0) != (tpl->kind == HWOF_MESSAGE))
            return fail(res, HWOF_E_NESTING, word);
        if (depth == 0) {
            if (cap - pos < MAX_MESSAGE + 8)
                break; /* a full chunk: the caller sends it and continues from res->consumed */
            message_word = word;
        }
        unsigned nargs = slot_words(tpl);
        if (word + 1 + nargs > nwords)
            return fail(res, HWOF_E_TRUNCATED, word);
        size_t start = depth ? stack[0].start : pos;
        if (pos + tpl->size - start > MAX_MESSAGE) /* room was left for this much, plus a match's padding */
            return fail(res, HWOF_E_TOO_LONG, message_word);
        memcpy(out + pos, tpl->data, tpl->size);
        const uint64_t *args = prog + word + 1;
        for (unsigned i = 0; i < tpl->nslots; i++) {
            if (put_slot(out + pos, &tpl->slots[i], args))
                return fail(res, HWOF_E_VALUE, word);
            args += tpl->slots[i].width > 8 ? 2 : 1;
        }
        if (tpl->kind == HWOF_MESSAGE)
            put_be(out + pos + 4, (uint32_t)(first_xid + messages), 4);
        if (tpl->kind != HWOF_PLAIN) {
            if (depth == HWOF_MAX_DEPTH)
                return fail(res, HWOF_E_NESTING, word);
            stack[depth].start = pos;
            stack[depth].tpl = tpl;
            depth++;
        }
        pos += tpl->size;
        word += 1 + nargs;
    }
    if (depth != 0 && word >= nwords)
        return fail(res, HWOF_E_TRUNCATED, message_word);
    return 0;
}
