# frozen_string_literal: true

# Writes objects with Ruby's real S3 Encryption Clients.
#
#   ruby put.rb <request.json> <response.json>
#
# request:  {"endpoint": "http://127.0.0.1:PORT", "items": [ITEM, ...]}
# ITEM:     {"bucket", "key", "body_b64",
#            "client": "v1" | "v2",
#            exactly one of "aes_key_b64" | "rsa_private_pem" | "kms_key_id",
#            "envelope_location": "metadata" | "instruction_file",
#            "instruction_file_suffix": ".instruction" (optional, write side),
#            "matdesc": {..} (optional; AES/RSA materials description,
#                        v2+KMS: kms_encryption_context),
#            "metadata": {..} (optional extra user metadata)}
# response: {"results": [{"ok": true} | {"ok": false, "error": "..."}, ...]}

require_relative 'oracle_common'

def encryption_client(endpoint, item, s3, kms)
  location = (item['envelope_location'] || 'metadata').to_sym
  base = { client: s3, envelope_location: location }
  base[:instruction_file_suffix] = item['instruction_file_suffix'] if item['instruction_file_suffix']
  matdesc = item['matdesc']
  case item['client']
  when 'v1'
    if item['kms_key_id']
      raise ArgumentError, 'v1 KMS writes always use matdesc {"kms_cmk_id": <key>}' if matdesc
      Aws::S3::Encryption::Client.new(**base, kms_key_id: item['kms_key_id'], kms_client: kms)
    else
      key = item['aes_key_b64'] ? S3ECOracle.unb64(item['aes_key_b64']) : S3ECOracle.rsa_key(item['rsa_private_pem'])
      opts = { encryption_key: key }
      opts[:materials_description] = JSON.generate(matdesc) if matdesc
      Aws::S3::Encryption::Client.new(**base, **opts)
    end
  when 'v2'
    v2 = base.merge(content_encryption_schema: :aes_gcm_no_padding, security_profile: :v2)
    if item['kms_key_id']
      Aws::S3::EncryptionV2::Client.new(**v2, key_wrap_schema: :kms_context,
                                              kms_key_id: item['kms_key_id'], kms_client: kms)
    elsif item['aes_key_b64']
      opts = { encryption_key: S3ECOracle.unb64(item['aes_key_b64']), key_wrap_schema: :aes_gcm }
      opts[:materials_description] = JSON.generate(matdesc) if matdesc
      Aws::S3::EncryptionV2::Client.new(**v2, **opts)
    else
      opts = { encryption_key: S3ECOracle.rsa_key(item['rsa_private_pem']), key_wrap_schema: :rsa_oaep_sha1 }
      opts[:materials_description] = JSON.generate(matdesc) if matdesc
      Aws::S3::EncryptionV2::Client.new(**v2, **opts)
    end
  else
    raise ArgumentError, "unknown client #{item['client'].inspect} (expected v1 or v2)"
  end
end

S3ECOracle.run do |req|
  endpoint = req.fetch('endpoint')
  s3 = S3ECOracle.s3_client(endpoint)
  kms = S3ECOracle.kms_client(endpoint)
  results = req.fetch('items').map do |item|
    client = encryption_client(endpoint, item, s3, kms)
    params = { bucket: item.fetch('bucket'), key: item.fetch('key'),
               body: S3ECOracle.unb64(item['body_b64']) }
    params[:metadata] = item['metadata'] if item['metadata']
    if item['client'] == 'v2' && item['kms_key_id'] && item['matdesc']
      params[:kms_encryption_context] = item['matdesc']
    end
    client.put_object(params)
    { 'ok' => true }
  rescue StandardError => e
    { 'ok' => false, 'error' => S3ECOracle.error_string(e) }
  end
  { 'results' => results }
end
