/*
 * header_rewrite: add, set and remove HTTP headers from config, in C.
 *
 * Config keys (values are the header values; for remove, ignored):
 *   request.set.<Name>     replace every <Name> of the request with one
 *   request.add.<Name>     append one more <Name> to the request
 *   request.remove.<Name>  remove every <Name> of the request
 *   response.set.<Name>, response.add.<Name>, response.remove.<Name>
 * Rules apply in config order: request rules at MOLT_EV_HTTP_REQUEST,
 * response rules at MOLT_EV_HTTP_RESPONSE. A rule the host refuses (a
 * framing header such as Content-Length) fails init, naming the key.
 *
 * Written against molt.h alone (ABI 1.1); built with -std=c99 -Wall
 * -Wextra -Werror -pedantic -fvisibility=hidden.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "molt.h"

typedef struct rule {
    uint32_t msg;  /* MOLT_HTTP_MSG_* */
    uint32_t mode; /* MOLT_HDR_* */
    char *name;
    char *value;
} rule;

typedef struct rw_instance {
    rule *rules;
    size_t n;
} rw_instance;

static const char *const host_owned[] = {"content-length", "transfer-encoding", "connection", "keep-alive",
                                         "proxy-connection", "te", "trailer", "upgrade", "expect"};

static int ieq(const char *a, const char *b) {
    for (; *a != '\0' && *b != '\0'; a++, b++) {
        char x = (*a >= 'A' && *a <= 'Z') ? (char)(*a + 32) : *a;
        char y = (*b >= 'A' && *b <= 'Z') ? (char)(*b + 32) : *b;
        if (x != y) {
            return 0;
        }
    }
    return *a == *b;
}

static char *rw_dup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = (char *)malloc(n);
    if (d != NULL) {
        memcpy(d, s, n);
    }
    return d;
}

static void free_rules(rw_instance *inst) {
    size_t i;
    for (i = 0; i < inst->n; i++) {
        free(inst->rules[i].name);
        free(inst->rules[i].value);
    }
    free(inst->rules);
    free(inst);
}

static molt_status fail(const molt_ctx *ctx, rw_instance *inst, molt_status rc, const char *msg) {
    if (inst != NULL) {
        free_rules(inst);
    }
    return ctx->api->set_error(ctx, rc, msg, strlen(msg));
}

static molt_status rw_init(const molt_ctx *ctx, const molt_init_args *args, void **instance) {
    rw_instance *inst;
    size_t i, j;
    char msg[256];

    if (!MOLT_API_HAS(ctx->api, http_header_set)) {
        return ctx->api->set_error(ctx, MOLT_ERR_VERSION, "header_rewrite needs a host with ABI 1.1 HTTP hooks", 52);
    }
    /* Rules run at REQUEST and RESPONSE only: the other hooks need not call us. */
    if (MOLT_API_HAS(ctx->api, http_hooks)) {
        molt_status rc = ctx->api->http_hooks(ctx, MOLT_HOOK_REQUEST | MOLT_HOOK_RESPONSE);
        if (rc != MOLT_OK) {
            return rc;
        }
    }
    inst = (rw_instance *)calloc(1, sizeof *inst);
    if (inst == NULL) {
        return fail(ctx, NULL, MOLT_ERR_NO_MEMORY, "header_rewrite: out of memory");
    }
    inst->rules = (rule *)calloc(args->config_len + 1, sizeof(rule));
    if (inst->rules == NULL) {
        return fail(ctx, inst, MOLT_ERR_NO_MEMORY, "header_rewrite: out of memory");
    }
    for (i = 0; i < args->config_len; i++) {
        const char *key = args->config[i].key;
        const char *rest;
        rule r;
        if (strncmp(key, "request.", 8) == 0) {
            r.msg = MOLT_HTTP_MSG_REQUEST;
            rest = key + 8;
        } else if (strncmp(key, "response.", 9) == 0) {
            r.msg = MOLT_HTTP_MSG_RESPONSE;
            rest = key + 9;
        } else {
            snprintf(msg, sizeof msg,
                     "header_rewrite: config key `%s` must start with request. or response. "
                     "(then set., add. or remove. and the header name)",
                     key);
            return fail(ctx, inst, MOLT_ERR_INVALID_ARG, msg);
        }
        if (strncmp(rest, "set.", 4) == 0) {
            r.mode = MOLT_HDR_SET;
            rest += 4;
        } else if (strncmp(rest, "add.", 4) == 0) {
            r.mode = MOLT_HDR_ADD;
            rest += 4;
        } else if (strncmp(rest, "remove.", 7) == 0) {
            r.mode = MOLT_HDR_REMOVE;
            rest += 7;
        } else {
            snprintf(msg, sizeof msg, "header_rewrite: config key `%s`: expected set., add. or remove. after the message",
                     key);
            return fail(ctx, inst, MOLT_ERR_INVALID_ARG, msg);
        }
        if (*rest == '\0') {
            snprintf(msg, sizeof msg, "header_rewrite: config key `%s` names no header", key);
            return fail(ctx, inst, MOLT_ERR_INVALID_ARG, msg);
        }
        for (j = 0; j < sizeof host_owned / sizeof host_owned[0]; j++) {
            if (ieq(rest, host_owned[j])) {
                snprintf(msg, sizeof msg,
                         "header_rewrite: config key `%s`: %s belongs to the proxy (framing or hop-by-hop)", key, rest);
                return fail(ctx, inst, MOLT_ERR_INVALID_ARG, msg);
            }
        }
        r.name = rw_dup(rest);
        r.value = rw_dup(args->config[i].value);
        if (r.name == NULL || r.value == NULL) {
            free(r.name);
            free(r.value);
            return fail(ctx, inst, MOLT_ERR_NO_MEMORY, "header_rewrite: out of memory");
        }
        inst->rules[inst->n++] = r;
    }
    *instance = inst;
    if (MOLT_API_HAS(ctx->api, log)) {
        snprintf(msg, sizeof msg, "header_rewrite ready with %u rules", (unsigned)inst->n);
        ctx->api->log(ctx, MOLT_LOG_INFO, msg, strlen(msg));
    }
    return MOLT_OK;
}

static molt_status rw_handle_event(const molt_ctx *ctx, void *data, const molt_event *ev) {
    const rw_instance *inst = (const rw_instance *)ctx->instance;
    uint32_t msg;
    size_t i;

    (void)data;
    if (ev->kind == MOLT_EV_HTTP_REQUEST) {
        msg = MOLT_HTTP_MSG_REQUEST;
    } else if (ev->kind == MOLT_EV_HTTP_RESPONSE) {
        msg = MOLT_HTTP_MSG_RESPONSE;
    } else {
        return MOLT_OK; /* other hooks, END and unknown kinds: nothing to do */
    }
    for (i = 0; i < inst->n; i++) {
        const rule *r = &inst->rules[i];
        molt_status rc;
        if (r->msg != msg) {
            continue;
        }
        rc = ctx->api->http_header_set(ctx, ev->handle, msg, r->mode, r->name, strlen(r->name), r->value,
                                       strlen(r->value));
        if (rc != MOLT_OK) {
            return rc; /* the host kept the reason */
        }
    }
    return MOLT_OK;
}

static void rw_fini(const molt_ctx *ctx) {
    if (ctx->instance != NULL) {
        free_rules((rw_instance *)ctx->instance);
    }
}

static const molt_module_desc rw_desc = {
    sizeof(molt_module_desc), MOLT_ABI_MAJOR, MOLT_ABI_MINOR,
    "header_rewrite",   /* name */
    "1.0.0",            /* version */
    1,                  /* version_number */
    0,                  /* state_schema: no state */
    0,                  /* flags */
    0,                  /* reserved */
    MOLT_HOST_CAP_HTTP, /* required_host_caps */
    MOLT_MOD_CAP_ISOLATABLE,
    rw_init,
    rw_handle_event,
    NULL, /* migrate */
    NULL, /* adopt */
    NULL, /* drain */
    rw_fini,
};

MOLT_EXPORT molt_status molt_module_entry_v1(const molt_host_info *host, const molt_module_desc **desc,
                                             char *errbuf, size_t errbuf_len) {
    if (host == NULL || desc == NULL) {
        return MOLT_ERR_INVALID_ARG;
    }
    if (host->abi_major != MOLT_ABI_MAJOR || host->abi_minor < 1) {
        if (errbuf != NULL && errbuf_len > 0) {
            strncpy(errbuf, "header_rewrite: needs molt ABI 1.1 or a later 1.x", errbuf_len - 1);
            errbuf[errbuf_len - 1] = '\0';
        }
        return MOLT_ERR_VERSION;
    }
    *desc = &rw_desc;
    return MOLT_OK;
}
