'use strict';
// @alicloud/kms20160120, the typed KMS client (on @alicloud/rpc-client: RPC, HMAC-SHA1), each action sent
// through its own request model and method. The package's models predate KMS instances: CreateKeyRequest
// has no DKMSInstanceId and no Tags, so those go alongside the model's own fields through the client's
// doRequest, as a user of this package has to; the run reports which fields went that way.

const Kms = require('@alicloud/kms20160120');
const $tea = require('@alicloud/tea-typescript');
const Util = require('@alicloud/tea-util');
const { run } = require('./flow');

const API_VERSION = '2016-01-20';
const outsideModel = {};

// The model's field names by wire name (CreateKeyRequest.names(): { keySpec: 'KeySpec', ... }).
function toModel(Model, params) {
  const fieldOf = Object.fromEntries(Object.entries(Model.names()).map(([field, wire]) => [wire, field]));
  const fields = {};
  const extra = {};
  for (const [wire, value] of Object.entries(params)) {
    const field = fieldOf[wire];
    if (field === undefined) {
      extra[wire] = value;
    } else {
      fields[field] = Model.types()[field] === 'number' ? Number(value) : value;
    }
  }
  return { model: new Model(fields), extra };
}

function makeClient(config, secret) {
  const client = new Kms.default({
    accessKeyId: config.accessKeyId, accessKeySecret: secret, endpoint: config.endpoint, protocol: 'http',
    regionId: config.regionId,
  });
  const runtime = () => new Util.RuntimeOptions({ autoretry: false });

  // Any action through the client's own signer; `nonce` replaces the SignatureNonce it draws.
  async function raw(action, params, nonce) {
    const query = nonce === undefined ? { ...params } : { ...params, SignatureNonce: nonce };
    return client.doRequest(action, 'HTTPS', 'POST', API_VERSION, 'AK', query, null, runtime());
  }

  async function call(action, params) {
    const Request = Kms[`${action}Request`];
    const Response = Kms[`${action}Response`];
    const { model, extra } = toModel(Request, params);
    if (Object.keys(extra).length === 0) {
      const method = `${action[0].toLowerCase()}${action.slice(1)}Ex`;
      return $tea.toMap(await client[method](model, runtime()));
    }
    outsideModel[action] = Object.keys(extra).sort();
    Util.default.validateModel(model);
    const body = await raw(action, { ...$tea.toMap(model), ...extra });
    return $tea.toMap($tea.cast(body, new Response({})));
  }
  return { call, raw, outsideModel };
}

run(makeClient);
