'use strict';
// @alicloud/openapi-client's generic callApi (no KMS models: action names and flat parameters), signed as
// config.signature says: "ACS3-HMAC-SHA256" or "ACS3-HMAC-SM3" (V3), or "v2" (RPC, HMAC-SHA1).

const OpenApi = require('@alicloud/openapi-client');
const Util = require('@alicloud/tea-util');
const { run } = require('./flow');

const API_VERSION = '2016-01-20';

function makeClient(config, secret) {
  const client = new OpenApi.default(new OpenApi.Config({
    accessKeyId: config.accessKeyId, accessKeySecret: secret, endpoint: config.endpoint, protocol: 'http',
    regionId: config.regionId, signatureAlgorithm: config.signature,
  }));
  // `nonce` replaces the one the client draws: both signing paths let the request's own values win.
  async function raw(action, params, nonce) {
    const query = { ...params };
    const headers = {};
    if (nonce !== undefined) {
      if (config.signature === 'v2') {
        query.SignatureNonce = nonce;
      } else {
        headers['x-acs-signature-nonce'] = nonce;
      }
    }
    const api = new OpenApi.Params({
      action, version: API_VERSION, protocol: 'HTTP', pathname: '/', method: 'POST', authType: 'AK',
      style: 'RPC', reqBodyType: 'formData', bodyType: 'json',
    });
    const request = new OpenApi.OpenApiRequest({ query, headers });
    const response = await client.callApi(api, request, new Util.RuntimeOptions({ autoretry: false }));
    if (response.statusCode !== 200) {
      throw new Error(`unexpected status ${response.statusCode} for ${action}`);
    }
    return response.body;
  }
  return { call: (action, params) => raw(action, params), raw };
}

run(makeClient);
