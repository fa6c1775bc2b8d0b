# frozen_string_literal: true

# Shared set-up for the Ruby S3 Encryption Client oracles (put.rb, get.rb).
# Driven by tests/interop/oracles.py; see tests/interop/README.md.
#
# Versions this was written against (Debian 12): ruby-aws-sdk-s3 1.117.2,
# ruby-aws-sdk-core 3.168.1, ruby-aws-sdk-kms 1.24.0, ruby 3.1.

require 'json'
require 'base64'
require 'openssl'
require 'aws-sdk-core'
require 'aws-sdk-s3'
require 'aws-sdk-kms'

module S3ECOracle
  REGION = 'us-east-1'

  module_function

  # Aws::S3::EncryptionV2's KMS cipher provider calls
  #   kms.decrypt(ciphertext_blob:, encryption_context:, key_id: <configured CMK>)
  # but the KMS API model shipped in Debian's aws-sdk-kms 1.24.0 predates the
  # Decrypt `KeyId` member, so the parameter validator rejects `key_id` before
  # any request is sent. We add the member (same shape and wire name as in current
  # aws-sdk-kms releases) to the in-memory model before creating any client, so
  # `KeyId` really goes over the wire and the server (moto) checks it.
  def patch_kms_decrypt_key_id!
    api = Aws::KMS::ClientApi
    shape = api::DecryptRequest
    return :already_present if shape.member?(:key_id)

    shape.add_member(
      :key_id,
      Seahorse::Model::Shapes::ShapeRef.new(shape: api::KeyIdType, location_name: 'KeyId')
    )
    :patched
  end

  def versions
    {
      'ruby' => RUBY_VERSION,
      'openssl' => OpenSSL::OPENSSL_LIBRARY_VERSION,
      'aws-sdk-core' => Aws::CORE_GEM_VERSION,
      'aws-sdk-s3' => Aws::S3::GEM_VERSION,
      'aws-sdk-kms' => Aws::KMS::GEM_VERSION
    }
  end

  def credentials
    Aws::Credentials.new('testing', 'testing', 'testing')
  end

  def s3_client(endpoint)
    Aws::S3::Client.new(
      endpoint: endpoint,
      force_path_style: true,
      region: REGION,
      credentials: credentials,
      retry_limit: 1
    )
  end

  # The encryption clients would otherwise build their own KMS client with only
  # region + credentials, i.e. without our endpoint.
  def kms_client(endpoint)
    Aws::KMS::Client.new(
      endpoint: endpoint,
      region: REGION,
      credentials: credentials,
      retry_limit: 1
    )
  end

  def rsa_key(pem)
    OpenSSL::PKey::RSA.new(pem)
  end

  def b64(str)
    Base64.strict_encode64(str)
  end

  def unb64(str)
    Base64.strict_decode64(str || '')
  end

  def error_string(err)
    "#{err.class}: #{err.message}"
  end

  # Reads the request JSON (argv[0]), yields the parsed request, writes the JSON
  # returned by the block to argv[1].
  def run
    unless ARGV.length == 2
      warn "usage: #{$PROGRAM_NAME} <request.json> <response.json>"
      exit 2
    end
    request = JSON.parse(File.read(ARGV[0], encoding: 'UTF-8'))
    patch_state = patch_kms_decrypt_key_id!
    response = yield request
    response['kms_decrypt_key_id_patch'] = patch_state.to_s
    response['versions'] = versions
    File.write(ARGV[1], JSON.generate(response))
  end
end
