import type { ComponentChildren } from "preact";
import { useEffect, useRef } from "preact/hooks";

export interface ConfirmProps {
  readonly title: string;
  readonly children: ComponentChildren;
  /** The confirming button's text: says what happens ("Purge 3 dead letters"). */
  readonly action: string;
  readonly onConfirm: () => void;
  readonly onCancel: () => void;
}

/**
 * A modal confirmation (`<dialog>` with `showModal`: focus is trapped inside, Escape
 * cancels, the page behind is inert). The safe choice, Cancel, has the focus first.
 */
export function Confirm({ title, children, action, onConfirm, onCancel }: ConfirmProps) {
  const dialog = useRef<HTMLDialogElement>(null);
  const cancel = useRef<HTMLButtonElement>(null);
  const onCancelNow = useRef(onCancel);
  onCancelNow.current = onCancel;
  useEffect(() => {
    const d = dialog.current;
    if (!d) return undefined;
    if (!d.open) d.showModal();
    cancel.current?.focus();
    const onClose = (): void => onCancelNow.current();
    d.addEventListener("cancel", onClose);
    return () => {
      d.removeEventListener("cancel", onClose);
      if (d.open) d.close();
    };
  }, []);
  return (
    <dialog ref={dialog} class="confirm" aria-labelledby="confirm-title" aria-describedby="confirm-body">
      <h2 id="confirm-title">{title}</h2>
      <div id="confirm-body">{children}</div>
      <div class="actions">
        <button type="button" ref={cancel} class="secondary" onClick={onCancel}>Cancel</button>
        <button type="button" class="danger" onClick={onConfirm}>{action}</button>
      </div>
    </dialog>
  );
}
