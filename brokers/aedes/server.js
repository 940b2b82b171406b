// A mutual-TLS MQTT broker on aedes, with the identity rules and ACL of
// the sync protocol (shared/PROTOCOL.md), for the mean-time-to-recover
// harness (mttr --broker aedes) and interop tests.
//
//   node server.js --port P --ca FILE --cert FILE --key FILE
//                  [--host 127.0.0.1] [--topic-root thermo]
//                  [--redis redis://HOST:PORT/DB [--id NODE]]
//
// - With --redis it is one node of a cluster: every node given the same
//   Redis routes messages to the others' clients (mqemitter-redis) and keeps
//   retained messages, sessions and wills there (aedes-persistence-redis),
//   so a client may connect to any node and a retained message published on
//   one is delivered by all. --id names the node (default: a random id,
//   which is right: a restarted node is a new one to the others).
//
// - Clients must present a certificate issued by --ca; its Common Name is
//   the client's identity and the MQTT client id must equal it.
// - "controller" and "controller-<name>" (PROTOCOL.md, Parties) may read
//   and write <root>/#; a device only <root>/<id>/#.
// - A publish outside the client's topics is acknowledged and dropped (as
//   Mosquitto does), not answered by closing the connection, which would
//   make paho resend it after every reconnect.
// - When listening it prints one line on stdout: "aedes ready port=<P>".
//   Logs go to stderr. SIGTERM and SIGINT close it cleanly.
//
// Without --redis, state (retained messages, sessions) is in memory: a
// restart loses it, which is what the harness's kill mode exercises.
//
// In a cluster, the will of a client whose node died is published by
// another node (aedes does this some minutes later, from the wills kept in
// Redis) with no client attached. Such a will is dropped: by then the
// device has most likely reconnected to another node and said "online",
// and a stale "offline" would hide it. A device that died with its node
// stays "online" in its retained status; the controller's last_seen shows
// its silence.

import fs from 'node:fs'
import tls from 'node:tls'
import process from 'node:process'
import { parseArgs } from 'node:util'
import { Aedes } from 'aedes'

const CONTROLLER = 'controller'
const DEVICE_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/
const CONTROLLER_PREFIX = CONTROLLER + '-'
// Forbidden publishes are moved to this topic: no client may subscribe to
// it (it is outside every topic root, and '#' does not match '$' topics),
// so the publish is acknowledged and reaches nobody.
const DROP_TOPIC = '$thermo/dropped'

function usage (msg) {
  process.stderr.write(`aedes broker: ${msg}\n` +
    'usage: node server.js --port P --ca FILE --cert FILE --key FILE [--host 127.0.0.1] [--topic-root thermo]\n' +
    '                      [--redis redis://HOST:PORT/DB [--id NODE]]\n')
  process.exit(2)
}

function parseFlags () {
  let values
  try {
    ({ values } = parseArgs({
      options: {
        port: { type: 'string' },
        host: { type: 'string', default: '127.0.0.1' },
        ca: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string' },
        'topic-root': { type: 'string', default: 'thermo' },
        redis: { type: 'string' },
        id: { type: 'string' }
      },
      strict: true
    }))
  } catch (err) {
    usage(err.message)
  }
  for (const f of ['port', 'ca', 'cert', 'key']) {
    if (!values[f]) usage(`--${f} is required`)
  }
  const port = Number(values.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`--port ${values.port}: not a port number`)
  const root = values['topic-root']
  if (root === '' || root.startsWith('$') || /[+#%\s\u0000]/.test(root) || root.split('/').includes('')) {
    usage(`--topic-root ${JSON.stringify(root)}: not a valid topic root`)
  }
  if (values.redis !== undefined && !/^rediss?:\/\/[^/\s]+(\/\d+)?$/.test(values.redis)) {
    usage(`--redis ${JSON.stringify(values.redis)}: want redis://HOST:PORT[/DB]`)
  }
  if (values.id !== undefined && values.redis === undefined) usage('--id names a node of a cluster: it needs --redis')
  if (values.id !== undefined && !/^[A-Za-z0-9_.-]{1,64}$/.test(values.id)) usage(`--id ${JSON.stringify(values.id)}: 1-64 of A-Z, a-z, 0-9, '_', '.', '-'`)
  return { ...values, port, root }
}

function log (msg, fields = {}) {
  const kv = Object.entries(fields).map(([k, v]) => `${k}=${JSON.stringify(String(v))}`).join(' ')
  process.stderr.write(`${new Date().toISOString()} ${msg}${kv ? ' ' + kv : ''}\n`)
}

// underPrefix reports whether topic (a name or a filter) is prefix or below
// it. A filter passes only if its first levels are exactly the prefix, so
// no wildcard reaches another device.
function underPrefix (prefix, topic) {
  return topic === prefix || topic.startsWith(prefix + '/')
}

// isController: "controller", or "controller-<name>" for one of several
// controller processes sharing the fleet (protocol.IsControllerID).
function isController (id) {
  return id === CONTROLLER || (id.startsWith(CONTROLLER_PREFIX) && DEVICE_ID.test(id.slice(CONTROLLER_PREFIX.length)))
}

function mayAccess (root, id, topic) {
  if (isController(id)) return underPrefix(root, topic)
  if (id.startsWith(CONTROLLER_PREFIX)) return false
  if (!DEVICE_ID.test(id)) return false
  return underPrefix(`${root}/${id}`, topic)
}

// redisOptions turns --redis into ioredis options, which both Redis
// packages take (aedes-persistence-redis has no URL option).
function redisOptions (s) {
  const u = new URL(s)
  // disableClientInfo: since ioredis 5.8.2 the CLIENT SETINFO round trip
  // comes before the ready check's INFO, and a SUBSCRIBE made meanwhile
  // puts the connection in subscriber mode first: the ready check fails and
  // mqemitter-redis emits an error (ioredis issue #2037, fixed in 6.0.0,
  // which mqemitter-redis 7 does not take). Without the round trip the
  // INFO goes out before any SUBSCRIBE can.
  const o = {
    host: u.hostname,
    port: Number(u.port || 6379),
    db: Number(u.pathname.slice(1) || 0),
    disableClientInfo: true
  }
  if (u.username) o.username = decodeURIComponent(u.username)
  if (u.password) o.password = decodeURIComponent(u.password)
  if (u.protocol === 'rediss:') o.tls = { servername: u.hostname }
  return o
}

function readFile (flag, path) {
  try {
    return fs.readFileSync(path)
  } catch (err) {
    usage(`--${flag}: ${err.message}`)
  }
}

// numberAtEmit makes aedes number each publish (brokerCounter) when it is
// emitted to the subscribers instead of when it arrived. Each client skips
// a packet whose number is not above the last one it was sent (aedes'
// dedupe of overlapping subscriptions). A retained publish is emitted only
// once the persistence has stored it, which with Redis is a round trip: a
// later publish of the same node, not retained, went out first, and the
// retained one was then skipped as a duplicate by every subscriber. A
// device's retained status followed by its telemetry lost the status (the
// controller never greeted it), and a retained Command or Event followed by
// anything was lost the same way. Numbered at emit, the numbers follow the
// order subscribers see on every node.
function numberAtEmit (aedes) {
  const emit = aedes.mq.emit.bind(aedes.mq)
  aedes.mq.emit = (packet, done) => {
    if (packet.brokerId === aedes.id && typeof packet.brokerCounter === 'number') {
      packet.brokerCounter = ++aedes.counter
    }
    return emit(packet, done)
  }
}

async function main () {
  const opts = parseFlags()
  const root = opts.root

  const brokerOpts = {
    id: 'thermo-aedes',
    // Device ids are up to 63 characters; aedes' default allows 23 (MQTT
    // 3.1). A controller-<name> is up to 74.
    maxClientsIdLength: 80
  }
  if (opts.redis) {
    brokerOpts.id = opts.id // undefined: aedes picks a random one
    // Loaded only for a cluster: a node_modules installed before these
    // packages were added still runs a single node.
    const { default: mqemitterRedis } = await import('mqemitter-redis')
    const { default: aedesPersistenceRedis } = await import('aedes-persistence-redis')
    brokerOpts.mq = mqemitterRedis(redisOptions(opts.redis))
    // mqemitter-redis re-emits its connections' errors; with no listener
    // the node would exit. ioredis reconnects (and subscribes again) by
    // itself, so a Redis fault is logged and the node lives on.
    brokerOpts.mq.state.on('error', (err) => log('redis error', { error: err.message }))
    brokerOpts.persistence = aedesPersistenceRedis(redisOptions(opts.redis))
  }
  const aedes = await Aedes.createBroker(brokerOpts)
  numberAtEmit(aedes)

  aedes.authenticate = (client, _username, _password, callback) => {
    const fail = (reason) => {
      log('connection refused', { client_id: client.id, reason })
      const err = new Error(reason)
      err.returnCode = 5 // not authorized
      callback(err, false)
    }
    const sock = client.conn
    if (!sock || !sock.authorized) return fail('no verified client certificate')
    const cert = sock.getPeerCertificate()
    const cn = cert && cert.subject && cert.subject.CN
    if (typeof cn !== 'string') return fail('certificate has no single Common Name')
    if (!isController(cn) && (!DEVICE_ID.test(cn) || cn.startsWith(CONTROLLER_PREFIX))) return fail(`certificate CN ${JSON.stringify(cn)} is not a valid device id or controller name`)
    if (client.id !== cn) return fail(`client id ${JSON.stringify(client.id)} does not match certificate CN ${JSON.stringify(cn)}`)
    // client._will is the CONNECT packet's will, set before authenticate
    // runs; aedes sends wills after authorizePublish, but refusing here
    // tells a misconfigured device at once.
    const will = client._will
    if (will && !mayAccess(root, cn, will.topic)) return fail(`will topic ${JSON.stringify(will.topic)} is outside the topics of ${JSON.stringify(cn)}`)
    callback(null, true)
  }

  aedes.authorizePublish = (client, packet, callback) => {
    if (client && mayAccess(root, client.id, packet.topic)) return callback(null)
    if (!client && packet.brokerId !== undefined) {
      // A dead node's will, published by this one (see the top).
      log('will of a client of a dead node dropped', { client: packet.clientId, node: packet.brokerId, topic: packet.topic })
      packet.topic = DROP_TOPIC
      packet.retain = false
      return callback(null)
    }
    log('publish dropped: topic outside the client\'s topics', {
      client: client ? client.id : '(none)', topic: packet.topic, qos: packet.qos, retain: packet.retain
    })
    packet.topic = DROP_TOPIC
    packet.retain = false
    callback(null)
  }

  aedes.authorizeSubscribe = (client, sub, callback) => {
    if (mayAccess(root, client.id, sub.topic)) return callback(null, sub)
    log('subscription refused', { client: client.id, filter: sub.topic })
    callback(null, null) // SUBACK 0x80
  }

  // Deliveries, retained ones included, go only where the ACL allows.
  aedes.authorizeForward = (client, packet) => {
    if (packet.topic === DROP_TOPIC || !mayAccess(root, client.id, packet.topic)) return null
    return packet
  }

  aedes.on('client', (client) => log('client connected', { client: client.id }))
  aedes.on('clientDisconnect', (client) => log('client disconnected', { client: client.id }))
  aedes.on('clientError', (client, err) => log('client error', { client: client.id, error: err.message }))
  aedes.on('connectionError', (client, err) => log('connection error', { client: client.id, error: err.message }))

  const server = tls.createServer({
    ca: readFile('ca', opts.ca),
    cert: readFile('cert', opts.cert),
    key: readFile('key', opts.key),
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
    noDelay: true
  }, aedes.handle)
  server.on('tlsClientError', (err, sock) => {
    log('connection refused: TLS handshake failed', { remote: `${sock.remoteAddress}:${sock.remotePort}`, error: err.message })
  })
  server.on('error', (err) => {
    log('server error', { error: err.message })
    process.exit(1)
  })

  let closing = false
  const shutdown = (sig) => {
    if (closing) return
    closing = true
    log('shutting down', { signal: sig })
    server.close()
    aedes.close(() => process.exit(0))
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))

  server.listen(opts.port, opts.host, () => {
    const addr = server.address()
    log('listening', { host: addr.address, port: addr.port, topic_root: root, node: aedes.id, redis: opts.redis ? 'yes' : 'no' })
    process.stdout.write(`aedes ready port=${addr.port}\n`)
  })
}

main().catch((err) => {
  log('fatal', { error: err.stack || err.message })
  process.exit(1)
})
