// The usual calls of the official Node.js client (nats.js, the `nats` package) as a user of a generated
// ebbtide credential makes them, reading the connection from the environment (a user's <user>.env):
//   NATS_URL, NATS_INBOX_PREFIX, and NATS_NKEY (a seed file) or NATS_USER + NATS_PASSWORD.
// argv[2]: "observer" (read an outbox through a KV view, the dead letters through the stream API) or
// "ingress" (publish an order to JetStream). Prints one JSON line: {"step": "ok" | "error: ..."}.
"use strict";
const fs = require("fs");
const { connect, nkeyAuthenticator, StringCodec } = require("nats");

async function main() {
  const role = process.argv[2];
  const options = { servers: process.env.NATS_URL, name: `nodejs-${role}`, timeout: 5000 };
  if (process.env.NATS_INBOX_PREFIX) options.inboxPrefix = process.env.NATS_INBOX_PREFIX;
  if (process.env.NATS_NKEY) {
    options.authenticator = nkeyAuthenticator(new TextEncoder().encode(fs.readFileSync(process.env.NATS_NKEY, "utf8").trim()));
  } else {
    options.user = process.env.NATS_USER;
    options.pass = process.env.NATS_PASSWORD;
  }
  const results = {};
  const step = async (name, run) => {
    try {
      results[name] = "ok " + JSON.stringify(await run());
    } catch (error) {
      results[name] = `error: ${error && error.message ? error.message : error}`;
    }
  };
  const nc = await connect(options);
  const sc = StringCodec();
  const js = nc.jetstream({ timeout: 5000 });
  if (role === "observer") {
    const bucket = process.env.CHECK_BUCKET;
    const key = process.env.CHECK_KEY;
    let kv;
    await step("kv view", async () => {
      kv = await js.views.kv(bucket);
      return bucket;
    });
    if (kv) {
      await step("kv get", async () => sc.decode((await kv.get(key)).value));
      await step("kv status", async () => (await kv.status()).values);
      await step("kv keys", async () => {
        const found = [];
        for await (const k of await kv.keys()) found.push(k);
        return found.sort();
      });
      await step("kv history", async () => {
        const found = [];
        for await (const e of await kv.history({ key })) found.push(e.revision);
        return found.length;
      });
      await step("kv watch", async () => {
        const watch = await kv.watch({ key });
        for await (const e of watch) {
          watch.stop();
          return sc.decode(e.value);
        }
      });
    }
    await step("stream info", async () => {
      const jsm = await nc.jetstreamManager();
      return (await jsm.streams.info(process.env.CHECK_STREAM)).state.messages;
    });
    await step("stream get", async () => {
      const jsm = await nc.jetstreamManager();
      return (await jsm.streams.getMessage(process.env.CHECK_STREAM, { seq: 1 })).subject;
    });
  } else if (role === "ingress") {
    await step("publish", async () => {
      const ack = await js.publish(process.env.CHECK_SUBJECT, sc.encode(process.env.CHECK_BODY), { msgID: process.env.CHECK_MSG_ID });
      return { stream: ack.stream, duplicate: ack.duplicate };
    });
  }
  console.log(JSON.stringify(results));
  await nc.close();
}

main().catch((error) => {
  console.log(JSON.stringify({ connect: `error: ${error && error.message ? error.message : error}` }));
  process.exit(1);
});
