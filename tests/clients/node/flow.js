'use strict';
// The vendor's BYOK flow for a Node client, recorded with the keys of tests/clients/client_support.py's
// run_flow, so that one Python check judges every client. The material is made and wrapped here with
// Node's own crypto (RSAES-OAEP SHA-256 around an AES-256 ESK, AES-256-ECB PKCS #7 around the PKCS #8 key),
// independently of the project's wrapping code. Nothing secret is printed: no material, no ESK, no token.

const crypto = require('crypto');

function readConfig() {
  const raw = process.argv[2];
  if (!raw) {
    throw new Error('usage: node CLIENT.js CONFIG_JSON');
  }
  return JSON.parse(raw);
}

// Guide step 3: Cipher(ESK) || Cipher(TAKpriv), base64. The buffers holding plaintext are zeroed after use.
function wrap(wrappingPublicKeyB64, pkcs8Der) {
  const wrappingKey = crypto.createPublicKey({
    key: Buffer.from(wrappingPublicKeyB64, 'base64'), format: 'der', type: 'spki',
  });
  const esk = crypto.randomBytes(32);
  try {
    const cipherEsk = crypto.publicEncrypt(
      { key: wrappingKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, esk,
    );
    const aes = crypto.createCipheriv('aes-256-ecb', esk, null);
    const cipherTak = Buffer.concat([aes.update(pkcs8Der), aes.final()]);
    return Buffer.concat([cipherEsk, cipherTak]).toString('base64');
  } finally {
    esk.fill(0);
  }
}

function newMaterial() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    privateKey,
    publicDerB64: publicKey.export({ type: 'spki', format: 'der' }).toString('base64'),
  };
}

function tagPairs(body) {
  return body.Tags.Tag.map((t) => [t.TagKey, t.TagValue]).sort();
}

// `call(action, params)` sends one action the client's way and resolves to the body with wire names.
async function runFlow(call, flow) {
  const record = {};
  const created = (await call('CreateKey', {
    KeySpec: 'RSA_2048', KeyUsage: 'SIGN/VERIFY', Origin: 'EXTERNAL', DKMSInstanceId: flow.instance,
    Description: `client suite: ${flow.label}`, Tags: JSON.stringify(flow.tagsAtCreate),
  })).KeyMetadata;
  const keyId = created.KeyId;
  record.key_id = keyId;
  record.created = created;
  record.tags_at_create = tagPairs(await call('ListResourceTags', { KeyId: keyId }));

  const params = await call('GetParametersForImport', {
    KeyId: keyId, WrappingKeySpec: 'RSA_2048', WrappingAlgorithm: flow.wrappingAlgorithm,
  });
  record.import_parameters = Object.keys(params).filter((k) => k !== 'RequestId').sort();
  const material = newMaterial();
  const pkcs8 = material.privateKey.export({ type: 'pkcs8', format: 'der' });
  let wrapped;
  try {
    wrapped = wrap(params.PublicKey, pkcs8);
  } finally {
    pkcs8.fill(0);
  }
  record.material_public_der_b64 = material.publicDerB64;
  await call('ImportKeyMaterial', {
    KeyId: keyId, ImportToken: params.ImportToken, EncryptedKeyMaterial: wrapped,
  });
  const described = (await call('DescribeKey', { KeyId: keyId })).KeyMetadata;
  record.imported = described;
  const version = described.PrimaryKeyVersion;
  record.public_key_pem = (await call('GetPublicKey', { KeyId: keyId, KeyVersionId: version })).PublicKey;

  const signed = await call('AsymmetricSign', {
    KeyId: keyId, KeyVersionId: version, Algorithm: flow.signingAlgorithm, Digest: flow.digestB64,
  });
  record.digest_b64 = flow.digestB64;
  record.signature_b64 = signed.Value;
  record.verified = (await call('AsymmetricVerify', {
    KeyId: keyId, KeyVersionId: version, Algorithm: flow.signingAlgorithm, Digest: flow.digestB64,
    Value: signed.Value,
  })).Value;

  await call('TagResource', { KeyId: keyId, Tags: JSON.stringify(flow.tagsAdded) });
  record.tags_after_tag = tagPairs(await call('ListResourceTags', { KeyId: keyId }));
  await call('UntagResource', { KeyId: keyId, TagKeys: JSON.stringify(flow.tagKeysRemoved) });
  record.tags_after_untag = tagPairs(await call('ListResourceTags', { KeyId: keyId }));

  await call('CreateAlias', { KeyId: keyId, AliasName: flow.alias });
  const aliases = (await call('ListAliasesByKeyId', { KeyId: keyId })).Aliases.Alias;
  record.aliases = aliases.map((a) => a.AliasName).sort();
  record.alias = flow.alias;

  await call('DeleteKeyMaterial', { KeyId: keyId });
  record.material_deleted = (await call('DescribeKey', { KeyId: keyId })).KeyMetadata;
  await call('ScheduleKeyDeletion', { KeyId: keyId, PendingWindowInDays: '7' });
  record.scheduled = (await call('DescribeKey', { KeyId: keyId })).KeyMetadata;
  return record;
}

// An error as the client surfaces it; `data` is the parsed error body the client kept.
function surfaced(error) {
  return {
    name: error.name, code: error.code, message: error.message, statusCode: error.statusCode, data: error.data,
  };
}

// Runs `attempt` and records how it failed (a success is recorded too, so the check can say so).
async function refusal(attempt) {
  try {
    const body = await attempt();
    return { succeeded: true, body };
  } catch (error) {
    return surfaced(error);
  }
}

// The whole run: the flow, then each error case; one JSON document on stdout.
async function main(makeClient) {
  const config = readConfig();
  const client = makeClient(config, config.accessKeySecret);
  const wrong = makeClient(config, config.wrongSecret);
  const result = { flow: await runFlow(client.call, config.flow), errors: {} };
  // Parameters a typed client had to send outside its request models, by action.
  result.outside_model = client.outsideModel || {};
  const cases = {
    wrong_secret: () => wrong.call('DescribeKey', { KeyId: config.missingKeyId }),
    unknown_action: () => client.raw(config.unknownAction, {}),
    replayed_nonce: async () => {
      const nonce = `${config.replayedNonce}-${config.flow.label}`;
      await client.raw('ListKeys', {}, nonce);
      return client.raw('ListKeys', {}, nonce);
    },
    missing_parameter: () => client.call('DescribeKey', {}),
    unknown_key: () => client.call('DescribeKey', { KeyId: config.missingKeyId }),
    // Format=XML wins over the client's own Format=json; it reads an XML error from its content type.
    unknown_key_xml: () => client.raw('DescribeKey', { KeyId: config.missingKeyId, Format: 'XML' }),
  };
  for (const name of config.cases) {
    result.errors[name] = await refusal(cases[name]);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function run(makeClient) {
  main(makeClient).catch((error) => {
    // The message only, less any quoted string to sign: a stack, a request dump or that string could
    // carry parameters (an import token among them).
    const message = String(error.message).replace(/\s*server string to sign is:.*$/s, '');
    process.stderr.write(`client run failed: ${error.code || error.name}: ${message}\n`);
    process.exit(1);
  });
}

module.exports = { run };
