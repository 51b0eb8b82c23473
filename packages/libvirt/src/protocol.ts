/**
 * Wire constants and the shared codecs of libvirt's RPC protocol.
 *
 * Everything here is hand-written from the protocol's documented facts (program and procedure
 * numbers, field order of the structs); no code is taken or generated from libvirt's protocol
 * definition files. Each codec names the libvirt struct it encodes.
 */
import { XdrReader, XdrWriter } from './xdr.js';
import type { RemoteErrorFields } from './errors.js';

/** Program number of the main libvirt program (`remote`). */
export const REMOTE_PROGRAM = 0x20008086;
/** Version of the `remote` program. */
export const REMOTE_PROTOCOL_VERSION = 1;
/** Program number of the keepalive program ('keep' in ASCII). */
export const KEEPALIVE_PROGRAM = 0x6b656570;
export const KEEPALIVE_VERSION = 1;
/** Keepalive procedures; both travel as type MESSAGE with an empty body. */
export const KeepaliveProc = { PING: 1, PONG: 2 } as const;

/** `virNetMessageType`. */
export const MessageType = {
  CALL: 0,
  REPLY: 1,
  MESSAGE: 2,
  STREAM: 3,
  CALL_WITH_FDS: 4,
  REPLY_WITH_FDS: 5,
  STREAM_HOLE: 6,
} as const;

/** `virNetMessageStatus`. */
export const MessageStatus = { OK: 0, ERROR: 1, CONTINUE: 2 } as const;

/** Size of the length word that starts every frame (the length counts itself). */
export const FRAME_LENGTH_BYTES = 4;
/** Size of the serialised header: prog, vers, proc, type, serial, status. */
export const HEADER_BYTES = 24;
/** Largest message the daemon accepts or sends, length word excluded (32 MiB). */
export const MESSAGE_MAX = 33_554_432;
/**
 * Largest stream payload per packet. The daemon takes bigger messages nowadays, but this is the
 * size libvirt's own client uses, so every daemon version accepts it.
 */
export const STREAM_CHUNK_MAX = 262_120;

/** Length of a UUID on the wire (raw bytes). */
export const UUID_BYTES = 16;

/**
 * Procedure numbers of the `remote` program that this package implements (`remote_procedure`).
 * Adding a procedure: add its number here, then its codec and method in api.ts (see README).
 */
export const Proc = {
  CONNECT_OPEN: 1,
  CONNECT_CLOSE: 2,
  CONNECT_GET_TYPE: 3,
  CONNECT_GET_VERSION: 4,
  NODE_GET_INFO: 6,
  CONNECT_GET_CAPABILITIES: 7,
  DOMAIN_GET_XML_DESC: 14,
  DOMAIN_GET_INFO: 16,
  DOMAIN_LOOKUP_BY_NAME: 23,
  DOMAIN_LOOKUP_BY_UUID: 24,
  CONNECT_GET_HOSTNAME: 59,
  CONNECT_SUPPORTS_FEATURE: 60,
  AUTH_LIST: 66,
  AUTH_POLKIT: 70,
  STORAGE_POOL_CREATE_XML: 76,
  STORAGE_POOL_DEFINE_XML: 77,
  STORAGE_POOL_CREATE: 78,
  STORAGE_POOL_BUILD: 79,
  STORAGE_POOL_DESTROY: 80,
  STORAGE_POOL_DELETE: 81,
  STORAGE_POOL_UNDEFINE: 82,
  STORAGE_POOL_REFRESH: 83,
  STORAGE_POOL_LOOKUP_BY_NAME: 84,
  STORAGE_POOL_LOOKUP_BY_UUID: 85,
  STORAGE_POOL_GET_INFO: 87,
  STORAGE_POOL_GET_XML_DESC: 88,
  STORAGE_VOL_CREATE_XML: 93,
  STORAGE_VOL_DELETE: 94,
  STORAGE_VOL_LOOKUP_BY_NAME: 95,
  STORAGE_VOL_GET_INFO: 98,
  STORAGE_VOL_GET_XML_DESC: 99,
  STORAGE_VOL_GET_PATH: 100,
  STORAGE_VOL_CREATE_XML_FROM: 125,
  CONNECT_GET_LIB_VERSION: 157,
  DOMAIN_ATTACH_DEVICE_FLAGS: 160,
  DOMAIN_DETACH_DEVICE_FLAGS: 161,
  DOMAIN_ABORT_JOB: 164,
  DOMAIN_CREATE_WITH_FLAGS: 196,
  STORAGE_VOL_UPLOAD: 208,
  STORAGE_VOL_DOWNLOAD: 209,
  DOMAIN_GET_STATE: 212,
  DOMAIN_UNDEFINE_FLAGS: 231,
  DOMAIN_DESTROY_FLAGS: 234,
  DOMAIN_SHUTDOWN_FLAGS: 258,
  CONNECT_LIST_ALL_DOMAINS: 273,
  CONNECT_LIST_ALL_STORAGE_POOLS: 281,
  STORAGE_POOL_LIST_ALL_VOLUMES: 282,
  DOMAIN_MIGRATE_PERFORM3_PARAMS: 305,
  CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY: 316,
  CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY: 317,
  DOMAIN_EVENT_CALLBACK_LIFECYCLE: 318,
  CONNECT_GET_ALL_DOMAIN_STATS: 344,
  DOMAIN_DEFINE_XML_FLAGS: 350,
} as const;

/** Name of a procedure of the `remote` program, for error messages (`PROC_123` if unknown). */
export function procName(proc: number): string {
  return PROC_NAMES.get(proc) ?? `PROC_${proc}`;
}
const PROC_NAMES = new Map<number, string>(Object.entries(Proc).map(([name, n]) => [n, name]));

/** Driver features queried with CONNECT_SUPPORTS_FEATURE (`VIR_DRV_FEATURE_*`, libvirt-internal). */
export const DriverFeature = {
  /** Asking for it turns keepalive on for this client on the daemon's side. */
  PROGRAM_KEEPALIVE: 10,
  REMOTE_EVENT_CALLBACK: 14,
} as const;

/** `remote_auth_type`. */
export const AuthType = { NONE: 0, SASL: 1, POLKIT: 2 } as const;

/** Header of every message. */
export interface MessageHeader {
  prog: number;
  vers: number;
  proc: number;
  type: number;
  serial: number;
  status: number;
}

/** Encodes one complete frame: length word, header, body. */
export function encodeFrame(h: MessageHeader, body?: Uint8Array): Buffer {
  const bodyLen = body?.length ?? 0;
  const w = new XdrWriter(FRAME_LENGTH_BYTES + HEADER_BYTES + bodyLen);
  w.uint(FRAME_LENGTH_BYTES + HEADER_BYTES + bodyLen)
    .uint(h.prog)
    .uint(h.vers)
    .int(h.proc)
    .int(h.type)
    .uint(h.serial)
    .int(h.status);
  if (body !== undefined && bodyLen > 0) w.raw(body);
  return w.finish();
}

/** Decodes the header at the start of `frame` (the length word already stripped). */
export function decodeHeader(r: XdrReader): MessageHeader {
  return { prog: r.uint(), vers: r.uint(), proc: r.int(), type: r.int(), serial: r.uint(), status: r.int() };
}

// ---------------------------------------------------------------------------------------------
// Object handles. libvirt identifies objects on the wire by small structs ("nonnull" handles).

/** A domain handle (`remote_nonnull_domain`): what lookups return and domain calls take. */
export interface DomainRef {
  name: string;
  /** Raw 16 bytes; see {@link uuidToString}. */
  uuid: Uint8Array;
  /** Hypervisor id while running, -1 when shut off. */
  id: number;
}

/** A storage pool handle (`remote_nonnull_storage_pool`). */
export interface StoragePoolRef {
  name: string;
  uuid: Uint8Array;
}

/** A storage volume handle (`remote_nonnull_storage_vol`). */
export interface StorageVolRef {
  /** Name of the pool that holds the volume. */
  pool: string;
  name: string;
  /** Unique key of the volume (usually its path). */
  key: string;
}

export function writeDomain(w: XdrWriter, d: DomainRef): void {
  w.string(d.name).fixedOpaque(d.uuid, UUID_BYTES).int(d.id);
}
export function readDomain(r: XdrReader): DomainRef {
  return { name: r.string(), uuid: r.fixedOpaque(UUID_BYTES), id: r.int() };
}
export function writePool(w: XdrWriter, p: StoragePoolRef): void {
  w.string(p.name).fixedOpaque(p.uuid, UUID_BYTES);
}
export function readPool(r: XdrReader): StoragePoolRef {
  return { name: r.string(), uuid: r.fixedOpaque(UUID_BYTES) };
}
export function writeVol(w: XdrWriter, v: StorageVolRef): void {
  w.string(v.pool).string(v.name).string(v.key);
}
export function readVol(r: XdrReader): StorageVolRef {
  return { pool: r.string(), name: r.string(), key: r.string() };
}
/** `remote_nonnull_network`: only skipped over (it appears inside `remote_error`). */
function readNetwork(r: XdrReader): { name: string; uuid: Uint8Array } {
  return { name: r.string(), uuid: r.fixedOpaque(UUID_BYTES) };
}

/** Formats 16 UUID bytes as the usual 8-4-4-4-12 lowercase hex string. */
export function uuidToString(uuid: Uint8Array): string {
  const hex = Buffer.from(uuid).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Parses a UUID string (dashes optional) into 16 bytes. */
export function uuidFromString(s: string): Uint8Array {
  const hex = s.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new TypeError(`not a UUID: ${s}`);
  return Buffer.from(hex, 'hex');
}

// ---------------------------------------------------------------------------------------------
// Errors

/** Decodes `remote_error` (the body of a reply or stream message with status ERROR). */
export function readRemoteError(r: XdrReader): RemoteErrorFields {
  const code = r.int();
  const domain = r.int();
  const message = r.optional((x) => x.string());
  const level = r.int();
  r.optional(readDomain); // dom: unused by libvirt, read to keep the position right
  const str1 = r.optional((x) => x.string());
  const str2 = r.optional((x) => x.string());
  const str3 = r.optional((x) => x.string());
  const int1 = r.int();
  const int2 = r.int();
  r.optional(readNetwork); // net: unused by libvirt
  return { code, domain, message, level, str1, str2, str3, int1, int2 };
}

/** Encodes `remote_error` (used by tests that play the daemon's part). */
export function writeRemoteError(w: XdrWriter, e: RemoteErrorFields): void {
  w.int(e.code).int(e.domain);
  w.optional(e.message, (x, v) => x.string(v));
  w.int(e.level);
  w.bool(false); // dom
  w.optional(e.str1, (x, v) => x.string(v));
  w.optional(e.str2, (x, v) => x.string(v));
  w.optional(e.str3, (x, v) => x.string(v));
  w.int(e.int1).int(e.int2);
  w.bool(false); // net
}

// ---------------------------------------------------------------------------------------------
// Typed parameters (`remote_typed_param`): a field name and a value whose type is a union tag.

/** `virTypedParameterType` tags on the wire. */
export const TypedParamType = { INT: 1, UINT: 2, LLONG: 3, ULLONG: 4, DOUBLE: 5, BOOLEAN: 6, STRING: 7 } as const;

/**
 * Flag that callers of the `*_get_*_parameters` family must set to receive string-typed
 * parameters at all (`VIR_TYPED_PARAM_STRING_OKAY`, libvirt-common.h).
 */
export const TYPED_PARAM_STRING_OKAY = 1 << 2;

/** One typed parameter, with its value in the most faithful JS type. */
export type TypedParam =
  | { field: string; type: 'int'; value: number }
  | { field: string; type: 'uint'; value: number }
  | { field: string; type: 'llong'; value: bigint }
  | { field: string; type: 'ullong'; value: bigint }
  | { field: string; type: 'double'; value: number }
  | { field: string; type: 'boolean'; value: boolean }
  | { field: string; type: 'string'; value: string };

/** Value of a typed parameter. */
export type TypedParamValue = TypedParam['value'];

export function readTypedParam(r: XdrReader): TypedParam {
  const field = r.string();
  const tag = r.int();
  switch (tag) {
    case TypedParamType.INT:
      return { field, type: 'int', value: r.int() };
    case TypedParamType.UINT:
      return { field, type: 'uint', value: r.uint() };
    case TypedParamType.LLONG:
      return { field, type: 'llong', value: r.hyper() };
    case TypedParamType.ULLONG:
      return { field, type: 'ullong', value: r.uhyper() };
    case TypedParamType.DOUBLE:
      return { field, type: 'double', value: r.double() };
    case TypedParamType.BOOLEAN:
      return { field, type: 'boolean', value: r.int() !== 0 };
    case TypedParamType.STRING:
      return { field, type: 'string', value: r.string() };
    default:
      // The union has no default arm, so an unknown tag leaves us unable to find the next field.
      throw new RangeError(`unknown typed parameter type ${tag} for field '${field}'`);
  }
}

export function writeTypedParam(w: XdrWriter, p: TypedParam): void {
  w.string(p.field);
  switch (p.type) {
    case 'int':
      w.int(TypedParamType.INT).int(p.value);
      break;
    case 'uint':
      w.int(TypedParamType.UINT).uint(p.value);
      break;
    case 'llong':
      w.int(TypedParamType.LLONG).hyper(p.value);
      break;
    case 'ullong':
      w.int(TypedParamType.ULLONG).uhyper(p.value);
      break;
    case 'double':
      w.int(TypedParamType.DOUBLE).double(p.value);
      break;
    case 'boolean':
      w.int(TypedParamType.BOOLEAN).int(p.value ? 1 : 0);
      break;
    case 'string':
      w.int(TypedParamType.STRING).string(p.value);
      break;
  }
}
