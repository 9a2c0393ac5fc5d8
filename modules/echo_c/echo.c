/*
 * echo_c: a molt module in C, written against molt.h alone.
 *
 * Every message is sent back to its source with the same tag and payload,
 * prefixed by the config value `prefix` (default: empty). As the handler of
 * a [[tcp]] route (ABI 1.1 connection I/O) it echoes the bytes of each
 * connection the same way. Continuations it
 * creates carry no data. Built with -std=c99 -Wall -Wextra -Werror -pedantic
 * and -fvisibility=hidden: molt_module_entry_v1 is its only exported symbol.
 */
#include <stdlib.h>
#include <string.h>

#include "molt.h"

/* The instance: the prefix copied from config (init allocates, fini frees). */
typedef struct echo_instance {
    char *prefix;
    size_t prefix_len;
} echo_instance;

static void echo_log(const molt_ctx *ctx, uint32_t level, const char *msg) {
    if (MOLT_API_HAS(ctx->api, log)) {
        ctx->api->log(ctx, level, msg, strlen(msg));
    }
}

static molt_status echo_init(const molt_ctx *ctx, const molt_init_args *args, void **instance) {
    echo_instance *inst;
    const char *prefix = "";
    size_t i;

    for (i = 0; i < args->config_len; i++) {
        if (strcmp(args->config[i].key, "prefix") == 0) {
            prefix = args->config[i].value;
        }
    }
    inst = (echo_instance *)calloc(1, sizeof *inst);
    if (inst == NULL) {
        return ctx->api->set_error(ctx, MOLT_ERR_NO_MEMORY, "echo_c: out of memory", 21);
    }
    inst->prefix_len = strlen(prefix);
    inst->prefix = (char *)malloc(inst->prefix_len + 1);
    if (inst->prefix == NULL) {
        free(inst);
        return ctx->api->set_error(ctx, MOLT_ERR_NO_MEMORY, "echo_c: out of memory", 21);
    }
    memcpy(inst->prefix, prefix, inst->prefix_len + 1);
    *instance = inst;
    echo_log(ctx, MOLT_LOG_INFO, "echo_c ready");
    return MOLT_OK;
}

static molt_status echo_handle_event(const molt_ctx *ctx, void *data, const molt_event *ev) {
    const echo_instance *inst = (const echo_instance *)ctx->instance;
    uint8_t stackbuf[256];
    uint8_t *buf = stackbuf;
    size_t total;
    molt_status rc;

    (void)data;
    if (ev->kind == MOLT_EV_CONN_DATA && MOLT_API_HAS(ctx->api, conn_write)) {
        /* A TCP handler (a [[tcp]] route with handler = "echo_c"): bytes back, prefixed. */
        if (inst->prefix_len > 0) {
            rc = ctx->api->conn_write(ctx, ev->handle, (const uint8_t *)inst->prefix, inst->prefix_len);
            if (rc != MOLT_OK) {
                return rc;
            }
        }
        return ctx->api->conn_write(ctx, ev->handle, ev->data, ev->len);
    }
    if (ev->kind != MOLT_EV_MESSAGE) {
        return MOLT_OK; /* START, TIMER, DRAIN, END, CONN_OPEN/CLOSED and unknown kinds: nothing to do */
    }
    if (inst->prefix_len == 0) {
        return ctx->api->cont_send(ctx, ev->source, ev->tag, ev->data, ev->len);
    }
    total = inst->prefix_len + ev->len;
    if (total > sizeof stackbuf) {
        buf = (uint8_t *)malloc(total);
        if (buf == NULL) {
            return ctx->api->set_error(ctx, MOLT_ERR_NO_MEMORY, "echo_c: out of memory", 21);
        }
    }
    memcpy(buf, inst->prefix, inst->prefix_len);
    if (ev->len > 0) {
        memcpy(buf + inst->prefix_len, ev->data, ev->len);
    }
    rc = ctx->api->cont_send(ctx, ev->source, ev->tag, buf, total);
    if (buf != stackbuf) {
        free(buf);
    }
    return rc;
}

static void echo_fini(const molt_ctx *ctx) {
    echo_instance *inst = (echo_instance *)ctx->instance;
    if (inst != NULL) {
        free(inst->prefix);
        free(inst);
    }
}

static const molt_module_desc echo_desc = {
    sizeof(molt_module_desc), MOLT_ABI_MAJOR, MOLT_ABI_MINOR,
    "echo_c",          /* name */
    "1.0.0",           /* version */
    1,                 /* version_number */
    0,                 /* state_schema: no state */
    0,                 /* flags */
    0,                 /* reserved */
    MOLT_HOST_CAP_CONT, /* required_host_caps */
    MOLT_MOD_CAP_ISOLATABLE, /* module_caps */
    echo_init,
    echo_handle_event,
    NULL, /* migrate */
    NULL, /* adopt */
    NULL, /* drain */
    echo_fini,
};

MOLT_EXPORT molt_status molt_module_entry_v1(const molt_host_info *host, const molt_module_desc **desc,
                                             char *errbuf, size_t errbuf_len) {
    if (host == NULL || desc == NULL) {
        return MOLT_ERR_INVALID_ARG;
    }
    if (host->abi_major != MOLT_ABI_MAJOR) {
        if (errbuf != NULL && errbuf_len > 0) {
            strncpy(errbuf, "echo_c: built for molt ABI major 1", errbuf_len - 1);
            errbuf[errbuf_len - 1] = '\0';
        }
        return MOLT_ERR_VERSION;
    }
    *desc = &echo_desc;
    return MOLT_OK;
}
