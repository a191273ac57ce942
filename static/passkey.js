// portcullis: passkeys (WebAuthn) in the browser. The one script the server sends, loaded
// only by pages with a passkey button (their CSP is `script-src 'self'`; no inline script).
// A form marked `data-passkey="create"` or `"get"` asks the server for the ceremony's options
// (POST to its `data-begin`, with the form's CSRF token), runs navigator.credentials, puts
// the browser's answer as JSON into the form's `credential` field and submits the form.
'use strict';
(function () {
  if (!window.PublicKeyCredential || !navigator.credentials) {
    return; // The buttons stay hidden: this browser has no WebAuthn.
  }

  function toBuffer(text) {
    var b64 = text.replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) { b64 += '='; }
    var bin = atob(b64);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out.buffer;
  }

  function toText(buffer) {
    if (!buffer) { return null; }
    var bytes = new Uint8Array(buffer);
    var bin = '';
    for (var i = 0; i < bytes.length; i++) { bin += String.fromCharCode(bytes[i]); }
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function ids(list) {
    (list || []).forEach(function (c) { c.id = toBuffer(c.id); });
  }

  function creationOptions(options) {
    var pk = options.publicKey;
    pk.challenge = toBuffer(pk.challenge);
    pk.user.id = toBuffer(pk.user.id);
    ids(pk.excludeCredentials);
    return { publicKey: pk };
  }

  function requestOptions(options) {
    var pk = options.publicKey;
    pk.challenge = toBuffer(pk.challenge);
    ids(pk.allowCredentials);
    return { publicKey: pk };
  }

  function registration(cred) {
    var r = cred.response;
    return {
      id: cred.id,
      rawId: toText(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: toText(r.attestationObject),
        clientDataJSON: toText(r.clientDataJSON),
        transports: r.getTransports ? r.getTransports() : undefined
      },
      extensions: cred.getClientExtensionResults()
    };
  }

  function assertion(cred) {
    var r = cred.response;
    return {
      id: cred.id,
      rawId: toText(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: toText(r.authenticatorData),
        clientDataJSON: toText(r.clientDataJSON),
        signature: toText(r.signature),
        userHandle: toText(r.userHandle)
      },
      extensions: cred.getClientExtensionResults()
    };
  }

  function begin(form) {
    var body = new URLSearchParams();
    body.set('csrf', form.elements.csrf.value);
    // A name refused is said now, before the device makes a passkey the server will refuse.
    if (form.elements.name) { body.set('name', form.elements.name.value); }
    return fetch(form.dataset.begin, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: body.toString()
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (json) {
        if (!resp.ok) { throw new Error(json.error || 'The server said no (' + resp.status + ').'); }
        return json;
      });
    });
  }

  function wire(form) {
    var kind = form.dataset.passkey;
    var status = form.querySelector('.passkey-status');
    var button = form.querySelector('button[type=submit]');
    form.querySelectorAll('[data-passkey-show]').forEach(function (el) { el.hidden = false; });
    function say(text, isError) {
      if (status) {
        status.textContent = text;
        status.classList.toggle('error', !!isError);
      }
    }
    form.addEventListener('submit', function (event) {
      if (form.elements.credential.value) { return; } // the answer is in: let it go
      event.preventDefault();
      if (button) { button.disabled = true; }
      say(kind === 'create' ? 'Follow your browser to create the passkey…' : 'Follow your browser to use your passkey…');
      var rpId = '';
      begin(form).then(function (options) {
        var pk = options.publicKey || {};
        rpId = kind === 'create' ? (pk.rp && pk.rp.id) || '' : pk.rpId || '';
        return kind === 'create'
          ? navigator.credentials.create(creationOptions(options)).then(registration)
          : navigator.credentials.get(requestOptions(options)).then(assertion);
      }).then(function (answer) {
        form.elements.credential.value = JSON.stringify(answer);
        say('Checking…');
        form.submit();
      }).catch(function (err) {
        // Disabled, the button lost the focus: given back, so a keyboard keeps its place (review 209).
        if (button) { button.disabled = false; button.focus(); }
        var cancelled = err && (err.name === 'NotAllowedError' || err.name === 'AbortError');
        // InvalidStateError at creation: the authenticator already holds one of this account's
        // passkeys (the server lists them to exclude); the browser's own words are technical.
        var held = err && err.name === 'InvalidStateError' && kind === 'create';
        // SecurityError: this page's host is not the relying party's or under it (a server
        // reached by address while its passkeys are for its name); the browser says only
        // "This is an invalid domain." (review 213).
        var host = window.location.hostname;
        var elsewhere = err && err.name === 'SecurityError' && rpId && host !== rpId &&
          host.slice(-(rpId.length + 1)) !== '.' + rpId;
        say(held ? 'This device already holds a passkey for your account: it is in the list below, so there is nothing to add.'
          : elsewhere ? 'Passkeys for this server work only at ' + rpId + ' (and names under it), not at ' + host +
            ': open this page at that address and try again.'
          : cancelled ? 'Cancelled, or the passkey was not available. You can try again.' : (err.message || String(err)), true);
      });
    });
  }

  document.querySelectorAll('form[data-passkey]').forEach(wire);
}());
