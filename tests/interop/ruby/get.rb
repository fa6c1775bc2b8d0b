# frozen_string_literal: true

# Reads objects with Ruby's real S3 Encryption Clients.
#
#   ruby get.rb <request.json> <response.json>
#
# request:  {"endpoint": "http://127.0.0.1:PORT", "items": [ITEM, ...]}
# ITEM:     {"bucket", "key",
#            "suffix": null | ".rewrapped"   (null: client defaults = metadata first,
#                                             then key + ".instruction";
#                                             string: get_object(envelope_location:
#                                             :instruction_file, instruction_file_suffix:)),
#            "client": "v2" (default) | "v1",
#            one of "kms_key_id" (default mode) | "aes_key_b64" | "rsa_private_pem",
#            "any_cmk": false (v2+KMS: kms_key_id: :kms_allow_decrypt_with_any_cmk),
#            "kms_encryption_context": {..} (v2+KMS, optional),
#            "security_profile": "v2_and_legacy" (default) | "v2"}
# response: {"results": [{"ok": true, "body_b64": ".."} | {"ok": false, "error": ".."}]}

require_relative 'oracle_common'

def decryption_client(item, s3, kms)
  case item['client'] || 'v2'
  when 'v2'
    profile = (item['security_profile'] || 'v2_and_legacy').to_sym
    v2 = { client: s3, content_encryption_schema: :aes_gcm_no_padding, security_profile: profile }
    if item['aes_key_b64']
      Aws::S3::EncryptionV2::Client.new(**v2, key_wrap_schema: :aes_gcm,
                                              encryption_key: S3ECOracle.unb64(item['aes_key_b64']))
    elsif item['rsa_private_pem']
      Aws::S3::EncryptionV2::Client.new(**v2, key_wrap_schema: :rsa_oaep_sha1,
                                              encryption_key: S3ECOracle.rsa_key(item['rsa_private_pem']))
    else
      key_id = item['any_cmk'] ? :kms_allow_decrypt_with_any_cmk : item['kms_key_id']
      raise ArgumentError, 'item needs kms_key_id (or any_cmk)' unless key_id
      Aws::S3::EncryptionV2::Client.new(**v2, key_wrap_schema: :kms_context,
                                              kms_key_id: key_id, kms_client: kms)
    end
  when 'v1'
    if item['aes_key_b64']
      Aws::S3::Encryption::Client.new(client: s3, encryption_key: S3ECOracle.unb64(item['aes_key_b64']))
    elsif item['rsa_private_pem']
      Aws::S3::Encryption::Client.new(client: s3, encryption_key: S3ECOracle.rsa_key(item['rsa_private_pem']))
    else
      Aws::S3::Encryption::Client.new(client: s3, kms_key_id: item.fetch('kms_key_id'), kms_client: kms)
    end
  else
    raise ArgumentError, "unknown client #{item['client'].inspect}"
  end
end

S3ECOracle.run do |req|
  endpoint = req.fetch('endpoint')
  s3 = S3ECOracle.s3_client(endpoint)
  kms = S3ECOracle.kms_client(endpoint)
  results = req.fetch('items').map do |item|
    client = decryption_client(item, s3, kms)
    params = { bucket: item.fetch('bucket'), key: item.fetch('key') }
    if item['suffix']
      params[:envelope_location] = :instruction_file
      params[:instruction_file_suffix] = item['suffix']
    end
    if item['kms_encryption_context'] && (item['client'] || 'v2') == 'v2'
      params[:kms_encryption_context] = item['kms_encryption_context']
    end
    body = client.get_object(params).body.read
    { 'ok' => true, 'body_b64' => S3ECOracle.b64(body.b) }
  rescue StandardError => e
    { 'ok' => false, 'error' => S3ECOracle.error_string(e) }
  end
  { 'results' => results }
end
